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
the pool providers that can still take a lead. Within one forecast every lead arrives at the
same instant, so a provider that cannot take a lead (paused, out of quota, out of area, closed by
its hours or time off, at a cap) cannot take a later one either: it leaves that list for good.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from allocation.engine import SLOTS, Candidate, Decision, choose_providers
from allocation.models import Lead
from allocation.services import (
    ROUTING_COLUMNS,
    LockedProvider,
    allocated_state,
    candidate_of,
)
from providers.models import CityAlias, Membership, PoolCursor, Provider, Service
from providers.routing import local_time, normalise_city, week_of
from providers.services import canonical_cities

T = TypeVar("T")

MAX_LEADS = 1000
# Provider columns in LockedProvider.of's order, read through a membership.
_COLUMNS = tuple(
    f"provider__{c}"
    for c in (
        "name",
        "status",
        "remaining_quota",
        "cycle",
        *ROUTING_COLUMNS,
        "leads_this_cycle",
        "quota",
    )
)
# SET TRANSACTION must be the transaction's first statement.
READ_ONLY_SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
READ_ONLY = "SET TRANSACTION READ ONLY"


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
    """The pool providers that can still take a lead, by position (the walk's live part)."""

    positions: list[int]
    by_position: dict[int, int]  # position -> provider id

    def walk(self, cursor: int | None, count: int) -> list[tuple[int, int]]:
        """The first ``count`` (provider id, position) after the cursor, wrapping once."""
        start = 0 if cursor is None else bisect.bisect_right(self.positions, cursor)
        size = len(self.positions)
        taken = [self.positions[(start + i) % size] for i in range(min(count, size))]
        return [(self.by_position[pos], pos) for pos in taken]

    def drop(self, position: int) -> None:
        index = bisect.bisect_left(self.positions, position)
        if index < len(self.positions) and self.positions[index] == position:
            del self.positions[index]


@dataclass
class _State:
    """The forecast's copy of what the engine would read and write, moved lead by lead."""

    at: datetime
    city_key: str
    cursor: int | None
    states: dict[int, LockedProvider]
    mandatory: list[tuple[int, int]]
    pool: _Pool
    # Pool providers are walked only while the materialised flag says open, as the engine's
    # per-city index does; at a later instant the routing check is assumed to have run.
    honour_flag: bool
    queued: bool = False
    pool_rows: list[tuple[int, int]] = field(default_factory=list)  # (provider id, position)
    used: dict[int, int] = field(default_factory=dict)  # leads this cycle
    quota: dict[int, int] = field(default_factory=dict)

    def rebuild_pool(self) -> None:
        live = sorted((pos, pid) for pid, pos in self.pool_rows if self.can_take_pool_lead(pid))
        self.pool = _Pool([pos for pos, _ in live], dict(live))

    def candidate(self, provider_id: int, position: int) -> Candidate:
        return candidate_of(self.states[provider_id], position, city=self.city_key, at=self.at)

    def can_take_pool_lead(self, provider_id: int) -> bool:
        state = self.states[provider_id]
        if self.honour_flag and not state.routing_open:
            return False
        return candidate_of(state, 0, city=self.city_key, at=self.at).eligible

    def decide(self, *, head: bool = False) -> Decision:
        """One lead: the engine's decision on the current state, then its effects. ``head``: the
        oldest waiting lead of this queue, in a drain (nothing waits ahead of it)."""
        mandatory = [self.candidate(pid, pos) for pid, pos in self.mandatory]
        needed = SLOTS - sum(c.eligible for c in mandatory)
        pool = [self.candidate(pid, pos) for pid, pos in self.pool.walk(self.cursor, needed)]
        queued = self.queued and not head
        decision = choose_providers(mandatory, pool, cursor=self.cursor, queued=queued)
        if not decision.complete:
            # It waits; every later lead of this service and city waits behind it.
            self.queued = True
            return decision
        for pick in decision.picks:
            self.states[pick.provider_id] = allocated_state(self.states[pick.provider_id], self.at)
            self.used[pick.provider_id] += 1
        picked = set(decision.provider_ids)
        for candidate in pool:
            if candidate.provider_id in picked and not self.can_take_pool_lead(
                candidate.provider_id
            ):
                self.pool.drop(candidate.position)
        self.cursor = decision.cursor
        return decision


def _load(
    service_id: int, city: str, at: datetime, what_if: WhatIf, now: datetime
) -> tuple[_State, int, list[int]]:
    """Everything the forecast reads, in the caller's snapshot: the state, the waiting leads
    ahead in this queue and the ids of this queue's waiting leads (for a what-if drain)."""
    key = normalise_city(city)
    key = CityAlias.objects.filter(alias=key).values_list("city", flat=True).first() or key
    cursor = PoolCursor.objects.filter(service_id=service_id).values_list("position", flat=True)
    cursor_position = cursor.first()
    waiting = list(
        Lead.objects.waiting()
        .filter(service_id=service_id, city_key=key)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    # Pool providers serving the city: everywhere, or listing it ('' is served by the former).
    serves = Q(provider__cities=[])
    if key:
        serves |= Q(provider__cities__contains=[key])
    rows = (
        Membership.objects.filter(service_id=service_id)
        .filter(
            Q(role=Membership.Role.MANDATORY)
            | serves
            | Q(provider_id__in=sorted(what_if.provider_ids))
        )
        .values_list("role", "position", "provider_id", *_COLUMNS)
    )
    state = _State(
        at=at,
        city_key=key,
        cursor=cursor_position,
        states={},
        mandatory=[],
        pool=_Pool([], {}),
        honour_flag=at <= now,
    )
    for role, position, pid, *row in rows:
        *row, state.used[pid], state.quota[pid] = row
        state.states[pid] = LockedProvider.of(pid, tuple(row))
        if role == Membership.Role.MANDATORY:
            state.mandatory.append((pid, position))
        else:
            state.pool_rows.append((pid, position))
    state.mandatory.sort(key=lambda m: m[1])
    state.rebuild_pool()
    return state, len(waiting), waiting


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
    state.states[pid] = new
    state.rebuild_pool()
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
        service = Service.objects.filter(pk=service_id).values_list("active", flat=True).first()
        if service is None:
            raise UnknownService(service_id)
        if not service:
            raise ForecastRefused({"service": ["This service is not available."]})
        _check_what_if(what_if)
        state, ahead, waiting = _load(service_id, city, at, what_if, now)
        cursor_before = state.cursor
        drained = 0
        for kind, pid, value in _changes(what_if):
            if _assume(state, kind, pid, value) and drained < len(waiting):
                # The change drains this queue, oldest lead first, until one stays waiting.
                while drained < len(waiting) and state.decide(head=True).complete:
                    drained += 1
        state.queued = drained < len(waiting)
        return _answer(state, leads, ahead, drained, cursor_before, what_if)

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
