"""The allocation engine's writes: intake of a lead and the drain of the waiting queue.

Every allocation runs in one short transaction:

1. Lock the service's pool cursor. Allocations of one service queue on this row, and
   everything that adds capacity takes it too (providers/services.py).
2. Read, without locks, the few pool memberships the walk needs: the next ones after the
   cursor, and the next *eligible* ones through a partial index. The work does not depend on
   the size of the pool or on how many providers are exhausted.
3. Lock the providers that may be picked in primary-key order, so services sharing providers
   can neither oversell a quota nor deadlock each other, and decide on their locked state.
4. Write the lead, its allocations, the quotas and the cursor, then commit.

A provider can lose its quota to another service between steps 2 and 3. When that leaves the
lead short and the read did not cover every eligible provider, the attempt is rolled back and
retried with a wider read. Deadlocks, serialization failures and lock timeouts are retried a
bounded number of times too; after the last attempt the caller gets :class:`Busy`.
"""

from __future__ import annotations

import functools
import heapq
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TypeVar

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import (
    DEFAULT_DB_ALIAS,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connection,
    transaction,
)
from django.db.models import Min, Q, QuerySet
from django.utils import timezone

from allocation.engine import (
    SLOTS,
    TRACE_LIMIT,
    Candidate,
    Decision,
    choose_providers,
    walk_key,
    walk_order,
)
from allocation.models import Lead
from allocation.sql import (
    CANDIDATES_SQL,
    DRAINED_LEAD_SQL,
    EXPIRE_SQL,
    HEAD_OF_QUEUE_SQL,
    HEAD_OF_SERVICE_SQL,
    NEW_ALLOCATED_LEAD_SQL,
    NEW_WAITING_LEAD_SQL,
    PICK_KEYS,
)
from events.services import announce_after_commit
from leaddist.http.db import MAX_BIGINT, connection_lost, is_transient, recover
from leaddist.http.metrics import ALLOCATION_SECONDS
from providers.locks import lock_cursors, lock_providers
from providers.models import CityAlias, PoolCursor, Provider, Service
from providers.routing import (
    OFF_HOURS,
    OUT_OF_AREA,
    TIME_REASONS,
    Routing,
    Usage,
    local_time,
    next_change,
    normalise_city,
    parse_hours,
    routing_reason,
    time_off_from_json,
    time_reason,
    with_usage_day,
)
from providers.services import canonical_cities, city_aliases, listed_cities, refresh_routing
from providers.signals import capacity_added

logger = logging.getLogger(__name__)

T = TypeVar("T")

DUPLICATE_CONSTRAINT = "allocation_lead_unique_phone_per_service"
# Eligible pool candidates read beyond the slots still open, on the first attempt. Each retry
# caused by a stolen candidate doubles it.
INITIAL_SLACK = 3
# Larger than any membership position (a PostgreSQL integer).
MAX_POSITION = 2**31 - 1


class Busy(Exception):
    """Transient conflicts persisted after every retry; nothing was stored."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("The allocation engine is busy; retry later.")
        self.retry_after = retry_after


INACTIVE_SERVICE = "This service is not available."


class ServiceUnavailable(Exception):
    """The service is inactive or gone, as read under its lock; nothing was stored."""

    def __init__(self, service_id: int) -> None:
        super().__init__(INACTIVE_SERVICE)
        self.service_id = service_id


class DuplicateLead(Exception):
    """A lead with this phone already exists for this service."""

    def __init__(self, lead_id: int) -> None:
        super().__init__(f"Lead #{lead_id} already has this phone for this service.")
        self.lead_id = lead_id


class _CandidatesTaken(Exception):
    """Providers read as eligible lost their quota before we locked them, or were closed by
    their time rules (``stale``: their materialised state is behind); read wider."""

    def __init__(self, stale: list[int] | None = None) -> None:
        super().__init__("candidates taken")
        self.stale = stale or []


@dataclass(frozen=True)
class LeadInput:
    service_id: int
    name: str
    phone: str
    city: str
    description: str = ""
    source: str = ""


def run_with_retries(attempt: Callable[[int], T]) -> T:
    """Run ``attempt(slack)`` until it commits; retry transient conflicts, then raise Busy.

    A lost connection is retried once, on a fresh connection (leaddist.http.db.recover); a second
    loss is Busy too. Nothing of a failed attempt is stored.
    """
    slack = INITIAL_SLACK
    attempts = settings.ALLOCATION_MAX_ATTEMPTS
    reconnected = False
    for number in range(1, attempts + 1):
        try:
            return attempt(slack)
        except _CandidatesTaken as taken:
            logger.debug("candidates taken by another service, attempt %d/%d", number, attempts)
            slack *= 2
            if taken.stale:
                # Bring their materialised state up to date (it only closes them: no capacity
                # is added), so that the next read passes them by.
                refresh_routing(provider_ids=taken.stale)
        except (OperationalError, InterfaceError) as exc:
            if connection_lost(exc):
                if reconnected:
                    break
                reconnected = True
                recover()
                continue
            if not is_transient(exc):
                raise
            logger.info("allocation conflict (%s), attempt %d/%d", exc.__cause__, number, attempts)
        if number < attempts:
            # Jittered backoff so that colliding transactions do not collide again.
            time.sleep(random.uniform(0, 0.005 * 2**number))
    raise Busy(retry_after=settings.BUSY_RETRY_AFTER_SECONDS)


_NO_RULES: dict[str, Routing] = {}


def _rules(cities, tz, hours, time_off, daily_cap, weekly_cap) -> Routing:  # noqa: ANN001
    """The routing rules of a row as read; one shared value for the providers without rules."""
    tz = tz or settings.TIME_ZONE
    if isinstance(time_off, str):  # jsonb reaches raw SQL as text
        time_off = json.loads(time_off) if time_off != "[]" else ()
    if not cities and not hours and not time_off and daily_cap is None and weekly_cap is None:
        rules = _NO_RULES.get(tz)
        if rules is None:
            rules = _NO_RULES.setdefault(tz, Routing(timezone=tz))
        return rules
    return Routing(
        cities=frozenset(cities),
        timezone=tz,
        hours=parse_hours(hours),
        time_off=time_off_from_json(time_off),
        daily_cap=daily_cap,
        weekly_cap=weekly_cap,
    )


@dataclass(frozen=True)
class LockedProvider:
    """A provider's state as read (under its row lock, for those that may be picked), as the
    decision and the writes need it."""

    id: int
    name: str
    active: bool
    remaining_quota: int
    cycle: int
    routing: Routing
    usage: Usage
    routing_open: bool
    routing_reason: str
    routing_changes_at: datetime | None

    @classmethod
    def of(cls, pid: int, row: tuple) -> LockedProvider:
        """From a CANDIDATES_SQL row, after its kind and position."""
        name, status, remaining, cycle, *r = row
        return cls(
            pid,
            name,
            status == Provider.Status.ACTIVE,
            remaining,
            cycle,
            _rules(*r[:6]),
            Usage(r[6], r[7], r[8], r[9]),
            r[10],
            r[11],
            r[12],
        )

    @property
    def takes_leads(self) -> bool:
        return self.active and self.remaining_quota > 0


@dataclass(frozen=True)
class Candidates:
    unavailable: bool
    queued: bool
    city_key: str  # the lead's canonical city
    mandatory: list[tuple[int, int]]  # provider_id, position, in position order
    eligible: list[tuple[int, int]]  # the first ``wanted`` eligible in walk order
    seen: list[tuple[int, int]]  # the pool the walk passes up to the last eligible read
    locked: dict[int, LockedProvider]
    unlocked: dict[int, tuple]  # the ``seen`` ones' rows as read (LockedProvider.of's input)


def _read_candidates(
    service_id: int,
    cursor: int | None,
    *,
    city: str,
    wanted: int,
    before: int = MAX_BIGINT,
    intake: bool = True,
) -> Candidates:
    """Steps 2 and 3 (CANDIDATES_SQL). ``city``: the lead's normalised city (its key, for a
    waiting lead). ``before``: only leads older than this one count as waiting ahead of it.
    ``intake``: lock nothing for an inactive service."""
    params = {
        "service": service_id,
        "city": city,
        "before": before,
        # Positions are >= 0: with no cursor the walk starts at the first position.
        "cursor": -1 if cursor is None else cursor,
        "wanted": wanted,
        "seen": TRACE_LIMIT,
        "intake": intake,
        "max_position": MAX_POSITION,
    }
    found: dict[str, list[tuple]] = {kind: [] for kind in ("key", "mandatory", "eligible", "seen")}
    with connection.cursor() as db:
        db.execute(CANDIDATES_SQL, params)
        # Each row: kind, position, provider id, then the provider's columns (LockedProvider).
        for kind, position, pid, *rest in db.fetchall():
            found[kind].append((pid, position, *rest))
    locked = {
        row[0]: LockedProvider.of(row[0], row[2:]) for row in found["mandatory"] + found["eligible"]
    }
    unlocked = {row[0]: row[2:] for row in found["seen"]}
    # The one 'key' row: the lead's canonical city, the service unavailable, a lead ahead.
    _, _, city_key, unavailable, queued, *_ = found["key"][0]
    return Candidates(
        unavailable=bool(unavailable),
        queued=bool(queued),
        city_key=city_key,
        mandatory=sorted(((row[0], row[1]) for row in found["mandatory"]), key=lambda r: r[1]),
        eligible=sorted(
            ((row[0], row[1]) for row in found["eligible"]),
            key=lambda row: walk_key(row[1], cursor),
        ),
        seen=sorted(
            ((row[0], row[1]) for row in found["seen"]), key=lambda r: walk_key(r[1], cursor)
        ),
        locked=locked,
        unlocked=unlocked,
    )


@functools.cache
def _cursor_lock_sql() -> str:
    """The cursor lock as the ORM writes it, compiled once per process: compiling a queryset
    costs more than running this statement, and it runs for every lead. Call it inside a
    transaction (select_for_update refuses to compile outside one)."""
    query = (
        PoolCursor.objects.select_for_update()
        .filter(service_id=0)
        .values_list("position", flat=True)
        .query
    )
    sql, _ = query.sql_with_params()
    return sql


def _lock_cursor(service_id: int) -> int | None:
    """Lock the service's pool cursor (step 1) and return its position."""
    with connection.cursor() as db:
        db.execute(_cursor_lock_sql(), [service_id])
        row = db.fetchone()
    if row is not None:
        return row[0]
    if not Service.objects.filter(pk=service_id).exists():
        raise ServiceUnavailable(service_id)
    return lock_cursors([service_id])[service_id].position  # creates a missing cursor row


def blocked_reason(state: LockedProvider, *, city: str, at: datetime) -> str | None:
    """Why the provider's routing rules refuse a lead of ``city`` (canonical) at ``at``, or
    None; None too when it is paused or out of quota, since the engine's own reasons come first."""
    if not state.takes_leads:
        return None
    return routing_reason(state.routing, state.usage, city=city, at=at)


def candidate_of(state: LockedProvider, position: int, *, city: str, at: datetime) -> Candidate:
    """The provider as the rule (choose_providers) sees it for a lead of ``city`` at ``at``.

    The one builder of a candidate from a provider's state: the engine calls it on the state it
    has locked, the forecast (allocation.forecast) on the state it simulates.
    """
    return Candidate(
        state.id,
        position,
        state.active,
        state.remaining_quota,
        blocked_reason(state, city=city, at=at),
    )


@dataclass(frozen=True)
class Decided:
    """What steps 2 and 3 found: the decision, the providers locked, the lead's canonical city."""

    decision: Decision
    locked: dict[int, LockedProvider]
    city_key: str


def _decide(
    service_id: int,
    cursor: int | None,
    *,
    city: str,
    now: datetime,
    slack: int,
    before: int = MAX_BIGINT,
    intake: bool = True,
) -> Decided:
    """Steps 2 and 3: read the candidates, lock them in pk order and apply the rule at ``now``.

    Each candidate's routing rules are read at ``now`` (providers.routing); the decision is
    made on the locked state. At intake the service must be active (ServiceUnavailable
    otherwise); a drain serves the leads already waiting for it either way.
    """
    wanted = SLOTS + slack
    found = _read_candidates(
        service_id, cursor, city=city, wanted=wanted, before=before, intake=intake
    )
    if intake and found.unavailable:
        raise ServiceUnavailable(service_id)
    if found.queued:
        return Decided(choose_providers([], [], cursor=cursor, queued=True), {}, found.city_key)
    covers_all_eligible = len(found.eligible) < wanted
    # '' (a lead whose city is blank once normalised) is served only by those serving everywhere.
    key = found.city_key

    def reason(state: LockedProvider) -> str | None:
        return blocked_reason(state, city=key, at=now)

    def under_lock(provider_id: int, position: int) -> Candidate:
        state = found.locked.get(provider_id)
        if state is None:  # never pick a provider we did not lock
            return Candidate(provider_id, position, active=False, remaining_quota=0)
        return candidate_of(state, position, city=key, at=now)

    def as_read(provider_id: int, position: int) -> Candidate:
        if provider_id in found.locked:
            return under_lock(provider_id, position)
        row = found.unlocked[provider_id]
        _, status, remaining, _, cities, *_ = row
        active = status == Provider.Status.ACTIVE
        if not active or remaining <= 0:
            return Candidate(provider_id, position, active, remaining)  # paused, no_quota
        if cities and key not in cities:
            # Most of a routed walk's trace: said without building the rules.
            return Candidate(provider_id, position, active, remaining, OUT_OF_AREA)
        state = LockedProvider.of(provider_id, row)
        blocked = reason(state)
        if state.takes_leads and blocked is None:
            # Open by its rules at ``now`` but not locked: its time rules opened after they
            # were last materialised, and the transition refresh has not run yet. It is not
            # picked (it is not locked); the trace gives the reason the walk went by.
            blocked = state.routing_reason or OFF_HOURS
        return Candidate(provider_id, position, state.active, state.remaining_quota, blocked)

    # The walk in order: every pool row we read, cut after the last eligible one (beyond it we
    # know nothing). Providers not in it sit between eligible ones and are ineligible.
    eligible = [under_lock(pid, pos) for pid, pos in found.eligible]
    ordered = list(eligible)
    listed = {pid for pid, _ in found.eligible}
    ordered += [as_read(pid, pos) for pid, pos in found.seen if pid not in listed]
    ordered = walk_order(ordered, cursor)
    if not covers_all_eligible:
        last_eligible = found.eligible[-1][1]
        cut = next(i for i, c in enumerate(ordered) if c.position == last_eligible)
        ordered = ordered[: cut + 1]

    decision = choose_providers(
        [under_lock(pid, pos) for pid, pos in found.mandatory], ordered, cursor=cursor
    )
    # Read as open, found closed by their time rules under our lock: their materialised state
    # is behind (the transition refresh has not run yet). Nothing adds capacity by closing
    # them, so they can be refreshed after this transaction without holding anything.
    stale = [c.provider_id for c in eligible if c.blocked in TIME_REASONS]
    if not decision.complete and not covers_all_eligible:
        # Another service took a candidate's last unit of quota between our read and our lock,
        # or stale candidates hid the ones behind them: read wider (after refreshing those).
        raise _CandidatesTaken(stale)
    if stale:
        transaction.on_commit(functools.partial(refresh_routing, provider_ids=stale), robust=True)
    return Decided(decision, found.locked, found.city_key)


def _write(sql: str, params: dict[str, object]) -> int:
    with connection.cursor() as db:
        db.execute(sql, params)
        (lead_id,) = db.fetchone()
    # The event rides in the same statement; wake the streams once it has committed.
    announce_after_commit()
    return lead_id


def _closed_by(rules: Routing, usage: Usage, now: datetime) -> tuple[str, datetime | None] | None:
    """If the usage after a lead at ``now`` reaches one of the caps: why the provider closes, and
    until when (None: no change ahead). None if it stays open, or has no caps."""
    if rules.daily_cap is None and rules.weekly_cap is None:
        return None
    reason = time_reason(rules, usage, now)
    if reason is None:
        return None
    return reason, next_change(rules, usage, now)


def _closing(state: LockedProvider, now: datetime) -> tuple[str, datetime | None] | None:
    """If this lead brings the picked provider to one of its caps: the routing state the
    allocation's UPDATE writes for it (closed, why, until when may it change). The UPDATE
    counts the lead itself, in the local day ``now`` falls on (its ``day``)."""
    rules = state.routing
    if rules.daily_cap is None and rules.weekly_cap is None:
        return None
    return _closed_by(rules, with_usage_day(rules, state.usage, now), now)


def allocated_state(state: LockedProvider, now: datetime) -> LockedProvider:
    """The provider's state after it takes a lead at ``now``, as ALLOCATION_WRITES_SQL writes
    it: a unit of quota less, the lead counted in its local day and week, and closed if this
    lead brings it to a cap (what ``_closing`` gives the write).

    The forecast calls it for every pick, so it builds the new state directly: dataclasses.replace
    cost more than the rest of the function."""
    rules = state.routing
    usage = with_usage_day(rules, state.usage, now)
    closed = _closed_by(rules, usage, now)
    return LockedProvider(
        state.id,
        state.name,
        state.active,
        state.remaining_quota - 1,
        state.cycle,
        rules,
        usage,
        state.routing_open and closed is None,
        state.routing_reason if closed is None else closed[0],
        state.routing_changes_at if closed is None else closed[1],
    )


def _allocation_params(
    service_id: int,
    decision: Decision,
    locked: dict[int, LockedProvider],
    *,
    now: datetime,
) -> dict[str, object]:
    params: dict[str, object] = {
        "service": service_id,
        "cursor": decision.cursor,
        "trace": json.dumps(_trace(decision)),
        "now": now,
    }
    days: dict[str, date] = {}  # the local date of ``now``, per timezone
    for keys, pick in zip(PICK_KEYS, decision.picks, strict=True):
        state = locked[pick.provider_id]
        tz = state.routing.timezone
        day = days.get(tz)
        if day is None:
            day = days[tz] = local_time(state.routing, now).date()
        closing = _closing(state, now)
        params.update(
            zip(
                keys,
                (pick.provider_id, pick.role, state.cycle, day, *(closing or (None, None))),
                strict=True,
            )
        )
    return params


def _committed_after_all(exc: Exception, written: QuerySet[Lead]) -> bool:
    """The connection was lost at COMMIT: did the commit happen? Asked on a fresh connection.

    PostgreSQL may have committed just before the connection went; then the lead is stored and
    must be answered as stored, not as an error. Its event committed with it, and streams pick
    it up at their next poll (the wake-up, an on_commit callback, never ran).
    """
    if not connection_lost(exc):
        return False
    recover()
    if not written.exists():
        return False
    logger.warning("the connection was lost at commit, and the commit had happened")
    return True


def _trace(decision: Decision) -> list[dict[str, object]]:
    return [entry.as_dict() for entry in decision.trace]


@dataclass(frozen=True)
class ChosenProvider:
    id: int
    name: str
    role: str


@dataclass(frozen=True)
class Intake:
    """What intake stored: the lead, and its providers in selection order (none if waiting).

    Built from what the engine decided under its locks, so answering the client needs no
    second read of what was just committed.
    """

    lead: Lead
    providers: tuple[ChosenProvider, ...]


def intake_lead(data: LeadInput) -> Intake:
    """Store a new lead allocated to exactly 3 providers, or waiting; never anything between.

    Raises DuplicateLead when (phone, service) exists, ServiceUnavailable when the service is
    inactive or gone, Busy when conflicts persist.
    """

    city = normalise_city(data.city)

    def attempt(slack: int) -> Intake:
        written: int | None = None
        try:
            with transaction.atomic():
                cursor = _lock_cursor(data.service_id)
                # The allocation time, read under the cursor lock: the routing rules are
                # applied at this instant, and it is the one stored.
                now = timezone.now()
                decided = _decide(data.service_id, cursor, city=city, now=now, slack=slack)
                decision, locked = decided.decision, decided.locked
                trace = _trace(decision)
                params: dict[str, object] = {
                    "name": data.name,
                    "phone": data.phone,
                    "city": data.city,
                    "city_key": decided.city_key,
                    "description": data.description,
                    "source": data.source,
                    "wait_reason": decision.wait_reason or "",
                }
                if decision.complete:
                    params |= _allocation_params(data.service_id, decision, locked, now=now)
                    params |= {"status": Lead.Status.ALLOCATED, "allocated_at": now}
                    written = _write(NEW_ALLOCATED_LEAD_SQL, params)
                else:
                    params |= {
                        "service": data.service_id,
                        "status": Lead.Status.WAITING,
                        "trace": json.dumps(trace),
                        "now": now,
                        "allocated_at": None,
                    }
                    written = _write(NEW_WAITING_LEAD_SQL, params)
        except (OperationalError, InterfaceError) as exc:
            if written is None or not _committed_after_all(exc, Lead.objects.filter(pk=written)):
                raise
        lead_id = written
        lead = Lead(
            pk=lead_id,
            service_id=data.service_id,
            name=data.name,
            phone=data.phone,
            city=data.city,
            city_key=params["city_key"],
            description=data.description,
            source=data.source,
            status=params["status"],
            wait_reason=params["wait_reason"],
            trace=trace,
            created_at=now,
            allocated_at=params["allocated_at"],
        )
        lead._state.adding = False
        lead._state.db = DEFAULT_DB_ALIAS
        chosen = tuple(
            ChosenProvider(pick.provider_id, locked[pick.provider_id].name, pick.role)
            for pick in decision.picks
        )
        return Intake(lead=lead, providers=chosen)

    started = time.perf_counter()
    try:
        return run_with_retries(attempt)
    except IntegrityError as exc:
        if (
            getattr(getattr(exc.__cause__, "diag", None), "constraint_name", None)
            != DUPLICATE_CONSTRAINT
        ):
            raise
        existing = Lead.objects.filter(phone=data.phone, service_id=data.service_id).values_list(
            "pk", flat=True
        )
        raise DuplicateLead(existing.first()) from exc
    finally:
        ALLOCATION_SECONDS.observe(time.perf_counter() - started)


def submit_lead(data: LeadInput) -> Lead:
    """:func:`intake_lead`, for callers that want only the stored lead."""
    return intake_lead(data).lead


def allocate_next_waiting(service_id: int, city_key: str | None = None) -> tuple[bool, int | None]:
    """Allocate the oldest waiting lead of the service and city if 3 providers can take it.

    ``city_key``: the canonical city of the queue; None: the service's oldest waiting lead,
    whatever its city. Return whether it was allocated, and the id of the lead waiting behind
    it in the same queue (None if none). The oldest waiting lead is read under the service's
    cursor lock, so it is exact: a lead stored waiting by a transaction that committed a moment
    ago is not passed over. Lock order: the cursor, the lead's row, then the providers.
    """

    def attempt(slack: int) -> tuple[bool, int | None]:
        written: int | None = None
        try:
            with transaction.atomic():
                cursor = _lock_cursor(service_id)
                with connection.cursor() as db:
                    if city_key is None:
                        db.execute(HEAD_OF_SERVICE_SQL, {"service": service_id})
                    else:
                        db.execute(HEAD_OF_QUEUE_SQL, {"service": service_id, "city_key": city_key})
                    head = db.fetchone()
                if head is None:
                    return False, None
                lead_id, key, behind = head
                now = timezone.now()
                decided = _decide(
                    service_id,
                    cursor,
                    city=key,
                    now=now,
                    slack=slack,
                    before=lead_id,
                    intake=False,
                )
                if not decided.decision.complete:
                    return False, lead_id
                params = _allocation_params(service_id, decided.decision, decided.locked, now=now)
                _write(DRAINED_LEAD_SQL, params | {"lead": lead_id})
                written = lead_id
        except (OperationalError, InterfaceError) as exc:
            allocated = Lead.objects.filter(pk=written, status=Lead.Status.ALLOCATED)
            if written is None or not _committed_after_all(exc, allocated):
                raise
            behind = None  # unknown: the next pass reads the queue again
        return True, behind

    return run_with_retries(attempt)


def allocate_waiting_leads(*, deadline: float | None = None) -> int:
    """Drain the waiting queues; return how many leads they allocated.

    There is one queue per (service, canonical city). Leads go in global order of arrival, one
    transaction per lead: of all queues with waiting leads, the one whose oldest lead is oldest
    goes next. A queue whose oldest lead stays waiting keeps the rest of its leads behind it;
    the other queues go on. Passes repeat until one allocates nothing, so capacity added
    meanwhile is used too. With ``deadline`` (a time.monotonic() value) it stops once that has
    passed, and leaves the rest for a later drain.
    """
    allocated = 0
    while True:
        heads = [
            (first, service_id, city_key)
            for service_id, city_key, first in Lead.objects.waiting()
            .values_list("service_id", "city_key")
            .annotate(first=Min("pk"))
            .values_list("service_id", "city_key", "first")
        ]
        heapq.heapify(heads)
        progressed = False
        while heads:
            if deadline is not None and time.monotonic() >= deadline:
                return allocated
            _, service_id, city_key = heapq.heappop(heads)
            try:
                done, behind = allocate_next_waiting(service_id, city_key)
            except Busy:
                logger.warning("drain: service %d busy, left for the next drain", service_id)
                done = False
            if not done:
                continue  # blocked: its later leads stay behind its oldest
            allocated += 1
            progressed = True
            if behind is not None:
                heapq.heappush(heads, (behind, service_id, city_key))
        if not progressed:
            return allocated


def expire_waiting_leads(*, now: datetime | None = None) -> int:
    """Mark every lead that has waited longer than LEAD_MAX_WAIT ``expired``; return how many.

    One transaction per service, under its cursor lock. An expired lead is never allocated:
    the engine allocates only waiting leads. The leads queued behind an expired one are drained
    by the caller (allocation.tasks), since they may now go through.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.LEAD_MAX_WAIT)
    service_ids = sorted(
        set(
            Lead.objects.waiting()
            .filter(created_at__lt=cutoff)
            .values_list("service_id", flat=True)
        )
    )
    expired = 0
    for service_id in service_ids:
        with transaction.atomic():
            _lock_cursor(service_id)
            with connection.cursor() as db:
                db.execute(EXPIRE_SQL, {"service": service_id, "cutoff": cutoff, "now": now})
                count = db.fetchone()[0]
            if count:
                announce_after_commit()
            expired += count
    if expired:
        logger.info(
            "expired %d lead(s) that waited longer than %ss", expired, settings.LEAD_MAX_WAIT
        )
    return expired


def add_city_alias(alias: str, city: str) -> CityAlias:
    """Declare that ``alias`` names ``city`` (SPEC §2a), and apply it to what is stored.

    Both are normalised; a city that is itself an alias resolves to its canonical name, and an
    alias may not be a canonical city of other aliases (no chains). In one transaction, under
    every service's cursor lock (a city may be served and awaited anywhere): the providers that
    list the alias serve the canonical city instead (their pool rows follow, by trigger; what
    they listed is kept, for :func:`remove_city_alias`), and the leads waiting under the alias
    join the canonical city's queue, in their order of arrival. Their services are drained after
    the commit. ValidationError says what is wrong.
    """
    alias_key, city_key = normalise_city(alias), normalise_city(city)
    errors: dict[str, list[str]] = {}
    if not alias_key:
        errors["alias"] = ["An alias needs a name."]
    if not city_key:
        errors["city"] = ["The city needs a name."]
    with transaction.atomic():
        service_ids = _lock_every_cursor()
        city_key = (
            CityAlias.objects.filter(alias=city_key).values_list("city", flat=True).first()
            or city_key
        )
        if alias_key and alias_key == city_key:
            errors.setdefault("alias", []).append("A city is not an alias of itself.")
        if CityAlias.objects.filter(city=alias_key).exists():
            errors.setdefault("alias", []).append(
                f"“{alias_key}” is the canonical name of other aliases; alias those to "
                f"“{city_key}” instead."
            )
        if errors:
            raise ValidationError(errors)
        saved, _ = CityAlias.objects.update_or_create(alias=alias_key, defaults={"city": city_key})
        _apply_aliases(alias_key, service_ids)
        Lead.objects.waiting().filter(city_key=alias_key).update(city_key=city_key)
    return saved


def remove_city_alias(alias: str) -> bool:
    """Undo an alias (SPEC §2a): the two names are two cities again. Return whether it existed.

    In one transaction, under every service's cursor lock, as :func:`add_city_alias`: the
    providers that listed the alias serve it again under its own name (and the canonical city
    only if they listed that too), and each lead waiting under the canonical city is keyed
    again by the city it was submitted with, through the aliases left, keeping its place by
    order of arrival. Allocated leads keep the city they were allocated under. The services
    are drained after the commit: the alias's own queue may now find providers.
    """
    alias_key = normalise_city(alias)
    with transaction.atomic():
        service_ids = _lock_every_cursor()
        found = CityAlias.objects.select_for_update().filter(alias=alias_key).first()
        if found is None:
            return False
        found.delete()
        _apply_aliases(alias_key, service_ids)
        _rekey_waiting_leads(found.city)
    return True


def change_city_alias(old_alias: str, alias: str, city: str) -> CityAlias:
    """Replace the alias ``old_alias`` by ``alias`` → ``city``, in one transaction: as if it
    were removed (:func:`remove_city_alias`) and the new one added (:func:`add_city_alias`),
    with nothing in between seen by an allocation. ValidationError changes nothing."""
    with transaction.atomic():
        remove_city_alias(old_alias)
        return add_city_alias(alias, city)


def _lock_every_cursor() -> list[int]:
    """Every service's cursor, by service id: a city may be served and awaited anywhere.
    Return the service ids; their waiting leads are drained after the commit."""
    service_ids = list(Service.objects.order_by("pk").values_list("pk", flat=True))
    lock_cursors(service_ids)

    def drain() -> None:
        capacity_added.send(sender=CityAlias, service_ids=service_ids)

    transaction.on_commit(drain, robust=True)
    return service_ids


def _apply_aliases(alias_key: str, service_ids: list[int]) -> None:
    """Derive again, from what they listed and the aliases as they are now, the cities of the
    providers that list ``alias_key`` or serve it. Under every cursor (the caller's), then
    these providers, by id."""
    aliases = city_aliases()
    listing = Provider.objects.filter(
        Q(listed_cities__contains=[alias_key]) | Q(cities__contains=[alias_key])
    ).values_list("pk", flat=True)
    for provider in lock_providers(listing).values():
        listed = listed_cities(provider)
        cities = canonical_cities(listed, aliases)
        if (cities, listed) != (provider.cities, provider.listed_cities):
            Provider.objects.filter(pk=provider.pk).update(cities=cities, listed_cities=listed)


def _rekey_waiting_leads(city_key: str) -> None:
    """Key the leads waiting under ``city_key`` again, from the city each was submitted with and
    the aliases as they are now. Under every cursor (the caller's), then these leads."""
    aliases = city_aliases()
    moved: dict[str, list[int]] = {}
    waiting = Lead.objects.waiting().filter(city_key=city_key).select_for_update()
    for lead_id, submitted in waiting.order_by("pk").values_list("pk", "city"):
        key = normalise_city(submitted)
        key = aliases.get(key, key)
        if key != city_key:
            moved.setdefault(key, []).append(lead_id)
    for key, ids in moved.items():
        Lead.objects.filter(pk__in=ids).update(city_key=key)
