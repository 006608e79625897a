"""The forecast (issue 23): what the next N leads of a service and city would get, and when each
provider involved runs out, computed from one read-only snapshot without writing anything.

It is exact by construction, not by a second copy of the rule: it loads the providers of the
service that serve the city into the engine's own state type (services.LockedProvider), builds
each lead's candidates with the engine's own builder (services.candidate_of), decides with the
engine's own function (engine.choose_providers), and after each pick moves the state as the
engine's write would (services.allocated_state). A new lead meets its city's waiting queue the
way intake does: while a lead of the same service and city waits, it waits behind it ("queued").

The pool a decision sees is the part of the walk choose_providers needs (its documented
contract: every eligible provider up to the last one needed), kept as the sorted positions of
the pool providers that may still take a lead. It starts as the rows the engine's own walk can
reach (now: its per-city index of eligible, open providers; at a later instant: active, with
quota, serving the city) plus the providers a what-if changes; whether each can take the lead
is still decided by candidate_of. Within one forecast every lead arrives at the same instant, so
a provider that cannot take a lead (paused, out of quota, out of area, closed by its hours or
time off, at a cap) cannot take a later one either: the walk drops it when it meets it, and only
a what-if change puts it back. Providers' states are read as the walk first reaches them, a
chunk at a time, and each candidate is built once per state (docs/PERFORMANCE.md, "Forecast").
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from django.contrib.postgres.expressions import ArraySubquery
from django.contrib.postgres.fields import ArrayField
from django.db import connection, models, transaction
from django.db.models import F, Func, OuterRef, Q, Subquery, Value
from django.db.models.functions import Cast, Coalesce
from django.utils import timezone

from allocation.engine import SLOTS, Candidate, Decision, choose_providers
from allocation.models import Lead
from allocation.services import LockedProvider, allocated_state, candidate_of
from allocation.sql import READ_ONLY, READ_ONLY_SNAPSHOT, ROUTING_COLUMNS
from providers.models import CityAlias, Membership, PoolCity, PoolCursor, Provider, Service
from providers.routing import local_time, normalise_city, week_of
from providers.services import canonical_cities

T = TypeVar("T")

MAX_LEADS = 1000
# Provider columns: LockedProvider.of's, then what a what-if quota change needs.
_COLUMNS = (
    "name",
    "status",
    "remaining_quota",
    "cycle",
    *ROUTING_COLUMNS,
    "leads_this_cycle",
    "quota",
)
_READ_COLUMNS = tuple(
    Cast("time_off", models.TextField()) if column == "time_off" else column for column in _COLUMNS
)


class UnknownService(Exception):
    """No service with this id."""


class ForecastRefused(Exception):
    """The forecast cannot be made as asked; ``fields`` says why, per parameter."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in fields.items()))
        self.fields = fields


@dataclass(frozen=True)
class WhatIf:
    """Changes assumed made before the forecast, as staff would make them (providers.services):
    a quota change leaves ``max(quota - leads this cycle, 0)`` to take; ``cities`` are the new
    areas (empty: everywhere)."""

    pause: tuple[int, ...] = ()
    resume: tuple[int, ...] = ()
    quota: dict[int, int] = field(default_factory=dict)
    cities: dict[int, tuple[str, ...]] = field(default_factory=dict)

    @property
    def provider_ids(self) -> set[int]:
        return {*self.pause, *self.resume, *self.quota, *self.cities}

    def as_dict(self) -> dict[str, object]:
        return {
            "pause": list(self.pause),
            "resume": list(self.resume),
            "quota": [{"provider": pid, "quota": n} for pid, n in self.quota.items()],
            "cities": [{"provider": pid, "cities": list(c)} for pid, c in self.cities.items()],
        }


@dataclass
class _Pool:
    """The pool providers that may still take a lead, by position, in position order. A
    provider leaves it when the walk finds it cannot (for the rest of the forecast)."""

    positions: list[int]
    by_position: dict[int, int]  # position -> provider id

    def order(self, cursor: int | None) -> Iterator[int]:
        """The indexes of ``positions`` once around, starting just after the cursor."""
        size = len(self.positions)
        start = 0 if cursor is None else bisect.bisect_right(self.positions, cursor)
        return itertools.chain(range(start, size), range(start))

    def drop(self, gone: list[int]) -> None:
        """Remove these positions (each present once)."""
        if len(gone) > 16:
            removed = set(gone)
            self.positions = [pos for pos in self.positions if pos not in removed]
            return
        for position in gone:
            del self.positions[bisect.bisect_left(self.positions, position)]

    def restore(self, position: int) -> None:
        index = bisect.bisect_left(self.positions, position)
        if index == len(self.positions) or self.positions[index] != position:
            self.positions.insert(index, position)


@dataclass
class _State:
    """The forecast's copy of what the engine would read and write, moved lead by lead.

    Providers' states are read when the walk first reaches them (``load``), a chunk at a time in
    walk order: N leads pick at most SLOTS * N times, so a pool of 10,000 costs the forecast the
    few thousand rows its walk passes, not the whole pool. Each provider's candidate is built
    once and kept until its state changes (a pick, or a what-if): every lead of the forecast
    arrives at the same instant, so nothing else can change it.
    """

    at: datetime
    city_key: str
    cursor: int | None
    states: dict[int, LockedProvider]
    mandatory: list[tuple[int, int]]
    pool: _Pool
    # Pool providers are walked only while the materialised flag says open, as the engine's
    # per-city index does; at a later instant the routing check is assumed to have run.
    honour_flag: bool
    read: Callable[[list[int]], dict[int, tuple[LockedProvider, int, int]]]
    chunk: int
    queued: bool = False
    pool_positions: dict[int, int] = field(default_factory=dict)  # provider id -> position
    used: dict[int, int] = field(default_factory=dict)  # leads this cycle
    quota: dict[int, int] = field(default_factory=dict)
    candidates: dict[int, Candidate] = field(default_factory=dict)  # provider id -> as built

    def set_state(self, provider_id: int, new: LockedProvider) -> None:
        self.states[provider_id] = new
        self.candidates.pop(provider_id, None)
        position = self.pool_positions.get(provider_id)
        if position is not None:
            self.pool.restore(position)  # the walk looks at it again, whatever it can now do

    def candidate(self, provider_id: int, position: int) -> Candidate:
        built = self.candidates.get(provider_id)
        if built is None:
            built = candidate_of(self.states[provider_id], position, city=self.city_key, at=self.at)
            self.candidates[provider_id] = built
        return built

    def read_from(self, index: int, also: Iterable[int] = ()) -> None:
        """Read the states of the next ``chunk`` unread pool providers in walk order from
        ``index`` (of the pool's positions), and of ``also``; the chunk doubles each time."""
        positions, by_position = self.pool.positions, self.pool.by_position
        size = len(positions)
        wanted = [pid for pid in also if pid not in self.states]
        taken = 0
        for k in range(size):
            pid = by_position[positions[(index + k) % size]]
            if pid not in self.states:
                wanted.append(pid)
                taken += 1
                if taken == self.chunk:
                    break
        for pid, (state, used, quota) in self.read(wanted).items():
            self.states[pid], self.used[pid], self.quota[pid] = state, used, quota
        self.chunk *= 2

    def walk(self, count: int) -> list[Candidate]:
        """The first ``count`` pool providers after the cursor that can take this lead, as
        candidates; the ones passed that cannot leave the pool."""
        found: list[Candidate] = []
        gone: list[int] = []
        for index in self.pool.order(self.cursor):
            if len(found) == count:
                break
            position = self.pool.positions[index]
            pid = self.pool.by_position[position]
            if pid not in self.states:
                self.read_from(index)
            candidate = self.candidate(pid, position)
            if candidate.eligible and (self.states[pid].routing_open or not self.honour_flag):
                found.append(candidate)
            else:
                gone.append(position)
        if gone:
            self.pool.drop(gone)
        return found

    def decide(self, *, head: bool = False) -> Decision:
        """One lead: the engine's decision on the current state, then its effects. ``head``: the
        oldest waiting lead of this queue, in a drain (nothing waits ahead of it)."""
        queued = self.queued and not head
        if queued:
            return choose_providers([], [], cursor=self.cursor, queued=True)
        mandatory = [self.candidate(pid, pos) for pid, pos in self.mandatory]
        needed = SLOTS - sum(c.eligible for c in mandatory)
        pool = self.walk(needed) if needed > 0 else []
        decision = choose_providers(mandatory, pool, cursor=self.cursor)
        if not decision.complete:
            # It waits; every later lead of this service and city waits behind it.
            self.queued = True
            return decision
        for pick in decision.picks:
            pid = pick.provider_id
            self.states[pid] = allocated_state(self.states[pid], self.at)
            self.candidates.pop(pid, None)
            self.used[pid] += 1
        self.cursor = decision.cursor
        return decision


class _IsAny(Func):
    """``expression = ANY(array)``."""

    arg_joiner = " = ANY("
    template = "%(expressions)s)"
    output_field = models.BooleanField()


def _id_array(ids: list[int]) -> Cast:
    """The list as one bigint[] parameter; cast in SQL, since a Value typed as an ArrayField
    would prepare each id in Python."""
    return Cast(Value(ids), ArrayField(models.BigIntegerField()))


def _read_states(provider_ids: list[int]) -> dict[int, tuple[LockedProvider, int, int]]:
    """The providers' states as the engine reads them, with their leads this cycle and quota.

    ``id = ANY(array)``, one parameter: ``pk__in`` of a few thousand ids costs more to build
    and to plan (a placeholder each) than to run. The list goes to psycopg as it is and is cast
    in SQL: a Value typed as an ArrayField would prepare each id in Python first. ``time_off``
    is read as text, which LockedProvider.of parses (as it does CANDIDATES_SQL's) only when it
    is not empty; the JSONField's converter parsed every row's."""
    rows = _fetch(_state_rows, ids=provider_ids)
    return {
        pid: (LockedProvider.of(pid, tuple(row)), used, quota) for pid, *row, used, quota in rows
    }


def _pool_rows(service_id: int, key: str, honour_flag: bool) -> Iterable[tuple[int, int]]:
    """(position, provider id) of the pool providers that may take a lead of the city, in
    position order: the ones the engine's walk can reach at all. Now, that is the engine's own
    per-city index (eligible and open, serving the city or everywhere: PoolCity); at a later
    instant the materialised flag is not honoured, so active with quota and serving the city.
    Which of them can take a lead is decided later, by candidate_of."""
    if honour_flag:
        return _fetch(_pool_city_rows, service_id, key)
    # Serving the city: everywhere, or listing it ('' is served by the former).
    serves = Q(provider__cities=[])
    if key:
        serves |= Q(provider__cities__contains=[key])
    return (
        Membership.objects.pool()
        .filter(serves, service_id=service_id)
        .filter(provider__status=Provider.Status.ACTIVE, provider__remaining_quota__gt=0)
        .order_by("position")
        .values_list("position", "provider_id")
    )


@dataclass(frozen=True)
class _Queue:
    """What one statement reads first: the service's availability, the city's canonical key,
    the pool cursor and the ids of the leads waiting in this service and city, oldest first."""

    active: bool
    city_key: str
    cursor: int | None
    waiting: list[int]


# Placeholders for the parameters of the statements compiled once per process (_fetch).
_SERVICE = -7_654_321
_KEY = "\x00forecast city\x00"
_IDS: list[int] = [-7_654_321]


def _queue_rows() -> models.QuerySet:
    """The service row with the city's alias, the cursor and the waiting leads as subqueries
    (one round trip instead of four)."""
    alias = CityAlias.objects.filter(alias=_KEY).values("city")[:1]
    city_key = Coalesce(Subquery(alias), Value(_KEY))
    cursor = PoolCursor.objects.filter(service_id=OuterRef("pk")).values("position")[:1]
    waiting = (
        Lead.objects.waiting()
        .filter(service_id=OuterRef("pk"), city_key=city_key)
        .order_by("pk")
        .values("pk")
    )
    return Service.objects.filter(pk=_SERVICE).values_list(
        "active", city_key, Subquery(cursor), ArraySubquery(waiting)
    )


def _pool_city_rows() -> models.QuerySet:
    """(position, provider id) of the engine's per-city index for the city and everywhere."""
    return (
        PoolCity.objects.filter(Q(city="") | Q(city=_KEY), service_id=_SERVICE)
        .filter(provider_eligible=True)
        .order_by("position")
        .values_list("position", "provider_id")
    )


def _pinned_rows() -> models.QuerySet:
    """(role, position, provider id) of the mandatory providers and those of ``_IDS``."""
    return (
        Membership.objects.filter(service_id=_SERVICE)
        .filter(Q(role=Membership.Role.MANDATORY) | _IsAny(F("provider_id"), _id_array(_IDS)))
        .values_list("role", "position", "provider_id")
    )


def _state_rows() -> models.QuerySet:
    """The providers of ``_IDS``: id, then _COLUMNS (``time_off`` as text)."""
    return (
        Provider.objects.filter(_IsAny(F("pk"), _id_array(_IDS)))
        .order_by()
        .values_list("pk", *_READ_COLUMNS)
    )


@functools.cache
def _statement(build: Callable[[], models.QuerySet]) -> tuple[str, tuple[object, ...]]:
    """A read's SQL and parameters, with the placeholders, compiled once per process: for the
    seed catalogue, compiling these querysets cost about as much CPU as the 100 decisions."""
    return build().query.sql_with_params()


def _fetch(
    build: Callable[[], models.QuerySet], service_id: int = 0, key: str = "", ids: list[int] = ()
) -> list[tuple]:
    """The rows of the read ``build`` makes, for this service, city key and ids; the values as
    psycopg gives them (as CANDIDATES_SQL's rows reach LockedProvider.of)."""
    sql, template = _statement(build)
    params = [
        ids
        if value is _IDS
        else service_id
        if value == _SERVICE
        else key
        if value == _KEY
        else value
        for value in template
    ]
    with connection.cursor() as db:
        db.execute(sql, params)
        return db.fetchall()


def _read_queue(service_id: int, city: str) -> _Queue:
    """_queue_rows for this service and city; UnknownService if there is no such service."""
    rows = _fetch(_queue_rows, service_id, normalise_city(city))
    if not rows:
        raise UnknownService(service_id)
    active, city_key, cursor, waiting = rows[0]
    return _Queue(active, city_key, cursor, waiting or [])


def _load(
    queue: _Queue, service_id: int, at: datetime, what_if: WhatIf, now: datetime, leads: int
) -> _State:
    """Everything else the forecast reads first, in the caller's snapshot, after ``queue``: the
    pool the walk can reach, the mandatory providers and those the what-if changes. The pool
    providers' states are read later, as the walk reaches them (_State.walk)."""
    key, cursor_position = queue.city_key, queue.cursor
    honour_flag = at <= now
    pool = dict(_pool_rows(service_id, key, honour_flag))
    # The mandatory providers and those a what-if changes (whatever their state now).
    pinned = _fetch(_pinned_rows, service_id, ids=sorted(what_if.provider_ids))
    mandatory: list[tuple[int, int]] = []
    for role, position, pid in pinned:
        if role == Membership.Role.MANDATORY:
            mandatory.append((pid, position))
        else:
            pool[position] = pid
    state = _State(
        at=at,
        city_key=key,
        cursor=cursor_position,
        states={},
        mandatory=sorted(mandatory, key=lambda m: m[1]),
        pool=_Pool(sorted(pool), pool),
        honour_flag=honour_flag,
        read=_read_states,
        # N leads take at most this many pool picks while the mandatory ones can take leads.
        chunk=max((SLOTS - len(mandatory)) * leads, 64),
        pool_positions={pid: pos for pos, pid in pool.items()},
    )
    # The first read: the mandatory providers, the what-if's, and the pool's first chunk.
    first = [pid for pid, _ in mandatory] + sorted(what_if.provider_ids & set(state.pool_positions))
    state.read_from(next(state.pool.order(state.cursor), 0), first)
    return state


def _is_eligible(state: LockedProvider) -> bool:
    """Provider.is_eligible on the simulated state: what decides whether a change drains."""
    return state.active and state.remaining_quota > 0 and state.routing_open


def _changes(what_if: WhatIf) -> list[tuple[str, int, object]]:
    """The what-if as single changes, in the order they are assumed made."""
    return (
        [("pause", pid, None) for pid in what_if.pause]
        + [("resume", pid, None) for pid in what_if.resume]
        + [("quota", pid, n) for pid, n in what_if.quota.items()]
        + [("cities", pid, c) for pid, c in what_if.cities.items()]
    )


def _assume(state: _State, kind: str, pid: int, value: object) -> bool:
    """Make one change on the simulated state, as providers.services would; return whether the
    real write would then drain the waiting queues (update_provider, set_routing)."""
    old = state.states.get(pid)
    if old is None:  # not a provider of this service: nothing here changes, nothing drains
        return False
    new = old
    if kind == "pause":
        new = dataclasses.replace(old, active=False)
    elif kind == "resume":
        new = dataclasses.replace(old, active=True)
    elif kind == "quota":
        quota = int(value)  # type: ignore[call-overload]
        if quota == state.quota[pid]:
            return False  # nothing written
        raised = quota > state.quota[pid]
        state.quota[pid] = quota
        new = dataclasses.replace(old, remaining_quota=max(quota - state.used[pid], 0))
    elif kind == "cities":
        cities = tuple(value)  # type: ignore[call-overload]
        if sorted(cities) == sorted(old.routing.cities):
            return False
        new = dataclasses.replace(old, routing=dataclasses.replace(old.routing, cities=cities))
    state.set_state(pid, new)
    if kind == "pause" or not _is_eligible(new):
        return False
    if kind == "resume":
        return not old.active
    if kind == "quota":
        return not _is_eligible(old) or raised
    return True


def _check_what_if(what_if: WhatIf) -> None:
    errors: dict[str, list[str]] = {}
    known = set(Provider.objects.filter(pk__in=what_if.provider_ids).values_list("pk", flat=True))
    for name, ids in (
        ("pause", what_if.pause),
        ("resume", what_if.resume),
        ("quota", what_if.quota),
        ("cities", what_if.cities),
    ):
        unknown = sorted(set(ids) - known)
        if unknown:
            errors.setdefault(name, []).append(
                "Unknown provider: " + ", ".join(str(pid) for pid in unknown) + "."
            )
    both = sorted(set(what_if.pause) & set(what_if.resume))
    if both:
        errors.setdefault("resume", []).append(
            "Both paused and resumed: " + ", ".join(str(pid) for pid in both) + "."
        )
    if errors:
        raise ForecastRefused(errors)


def canonical_what_if_cities(names: Iterable[str]) -> tuple[str, ...]:
    """A what-if area as set_routing would store it: normalised, through the aliases."""
    return tuple(canonical_cities(names))


def _leads_left(state: LockedProvider, at: datetime) -> int:
    """How many more leads the provider could take at ``at``: its quota, within its caps."""
    left = state.remaining_quota
    rules, usage = state.routing, state.usage
    if rules.daily_cap is not None or rules.weekly_cap is not None:
        today = local_time(rules, at).date()
        if rules.daily_cap is not None:
            left = min(left, rules.daily_cap - usage.today(today))
        if rules.weekly_cap is not None:
            left = min(left, rules.weekly_cap - usage.this_week(week_of(today)))
    return max(left, 0)


def _in_snapshot(work: Callable[[], T]) -> T:
    """Run ``work()`` in one read-only snapshot, and roll back whatever happens.

    Outside a transaction (a request), the transaction is REPEATABLE READ, READ ONLY: one
    snapshot for every read, and PostgreSQL refuses any write. Inside a caller's transaction
    (tests), a savepoint made read only; the caller's isolation level stands.
    """
    if connection.in_atomic_block:
        with transaction.atomic():
            with connection.cursor() as db:
                db.execute(READ_ONLY)
            result = work()
            transaction.set_rollback(True)  # the savepoint goes, and its read-only setting
        return result
    with transaction.atomic():
        with connection.cursor() as db:
            db.execute(READ_ONLY_SNAPSHOT)
        result = work()
        transaction.set_rollback(True)  # nothing was written; end it as cheaply as a commit
    return result


def forecast(
    service_id: int,
    *,
    leads: int,
    city: str = "",
    at: datetime | None = None,
    what_if: WhatIf | None = None,
) -> dict[str, object]:
    """What the next ``leads`` leads of the service and city would get, as plain data.

    Exact while nothing else changes (docs/SPEC.md §2b). Reads one snapshot, locks nothing,
    writes nothing. Raises UnknownService, or ForecastRefused for a bad what-if or an inactive
    service.
    """
    what_if = what_if or WhatIf()
    now = timezone.now()
    at = at or now

    def work() -> dict[str, object]:
        queue = _read_queue(service_id, city)
        if not queue.active:
            raise ForecastRefused({"service": ["This service is not available."]})
        _check_what_if(what_if)
        state = _load(queue, service_id, at, what_if, now, leads)
        waiting = queue.waiting
        cursor_before = state.cursor
        drained = 0
        for kind, pid, value in _changes(what_if):
            if _assume(state, kind, pid, value) and drained < len(waiting):
                # The change drains this queue, oldest lead first, until one stays waiting.
                while drained < len(waiting) and state.decide(head=True).complete:
                    drained += 1
        state.queued = drained < len(waiting)
        return _answer(state, leads, len(waiting), drained, cursor_before, what_if)

    return _in_snapshot(work)


def _answer(
    state: _State,
    count: int,
    ahead: int,
    drained: int,
    cursor_before: int | None,
    what_if: WhatIf,
) -> dict[str, object]:
    out: list[dict[str, object]] = []
    involved: dict[int, int | None] = {}  # provider id -> runs_out_at
    for n in range(1, count + 1):
        decision = state.decide()
        if not decision.complete:
            out.append({"n": n, "status": "waiting", "reason": decision.wait_reason})
            continue
        providers = []
        for rank, pick in enumerate(decision.picks, start=1):
            pid = pick.provider_id
            name = state.states[pid].name
            providers.append({"id": pid, "name": name, "role": pick.role, "rank": rank})
            involved.setdefault(pid, None)
            if involved[pid] is None and _leads_left(state.states[pid], state.at) == 0:
                involved[pid] = n
        out.append({"n": n, "status": "allocated", "providers": providers})
    return {
        "leads": out,
        "providers": [
            {
                "id": pid,
                "name": state.states[pid].name,
                "leads_left": _leads_left(state.states[pid], state.at),
                "runs_out_at": runs_out_at,
            }
            for pid, runs_out_at in sorted(involved.items())
        ],
        "based_on": {
            "at": state.at,
            "city": state.city_key,
            "cursor": cursor_before,
            "waiting_ahead": ahead,
            "drained_first": drained,
        },
        "what_if": what_if.as_dict(),
    }
