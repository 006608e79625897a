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
from datetime import datetime
from typing import TypeVar

from django.conf import settings
from django.db import (
    DEFAULT_DB_ALIAS,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connection,
    transaction,
)
from django.db.models import Min, QuerySet
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
from events.services import announce_after_commit
from leaddist.http.db import MAX_BIGINT, connection_lost, recover
from leaddist.http.metrics import ALLOCATION_SECONDS
from providers.locks import lock_cursors
from providers.models import PoolCursor, Provider, Service

logger = logging.getLogger(__name__)

T = TypeVar("T")

# deadlock_detected, serialization_failure, lock_not_available (lock_timeout)
TRANSIENT_SQLSTATES = frozenset({"40P01", "40001", "55P03"})
DUPLICATE_CONSTRAINT = "allocation_lead_unique_phone_per_service"
# Eligible pool candidates read beyond the slots still open, on the first attempt. Each retry
# caused by a stolen candidate doubles it.
INITIAL_SLACK = 3


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
    """Providers read as eligible lost their quota before we locked them; read wider."""


@dataclass(frozen=True)
class LeadInput:
    service_id: int
    name: str
    phone: str
    city: str
    description: str = ""
    source: str = ""


def _is_transient(exc: OperationalError) -> bool:
    return getattr(exc.__cause__, "sqlstate", None) in TRANSIENT_SQLSTATES


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
        except _CandidatesTaken:
            logger.debug("candidates taken by another service, attempt %d/%d", number, attempts)
            slack *= 2
        except (OperationalError, InterfaceError) as exc:
            if connection_lost(exc):
                if reconnected:
                    break
                reconnected = True
                recover()
                continue
            if not _is_transient(exc):
                raise
            logger.info("allocation conflict (%s), attempt %d/%d", exc.__cause__, number, attempts)
        if number < attempts:
            # Jittered backoff so that colliding transactions do not collide again.
            time.sleep(random.uniform(0, 0.005 * 2**number))
    raise Busy(retry_after=settings.BUSY_RETRY_AFTER_SECONDS)


# Steps 2 and 3 in one round trip. Under the cursor lock (step 1) this statement's snapshot is
# fresh for this service; each part goes through an index:
# - whether the service is active, and whether an older lead of it waits (partial index
#   lead_waiting_queue): then nothing is locked;
# - the mandatory providers, and the first ``wanted`` eligible pool providers in walk order
#   (after the cursor, then from the start; partial index membership_eligible_walk);
# - those providers, locked FOR UPDATE in primary-key order (``locked``), so services sharing
#   providers can neither oversell a quota nor deadlock each other; their state as locked;
# - the ineligible pool providers the walk passes, for the trace (membership_ineligible_walk),
#   unlocked: nothing can make them eligible while we hold the cursor, since everything that
#   adds capacity takes the cursors of the provider's services first.
CANDIDATES_SQL = """
WITH
blocked AS (
    SELECT EXISTS (SELECT FROM providers_service WHERE id = %(service)s AND active)
               AS active,
           EXISTS (SELECT FROM allocation_lead
                    WHERE service_id = %(service)s AND status = 'waiting' AND id < %(before)s)
               AS queued
),
mandatory AS (
    SELECT m.provider_id, m.position FROM providers_membership m
     WHERE m.service_id = %(service)s AND m.role = 'mandatory'
),
eligible AS (
    SELECT provider_id, position FROM (
        (SELECT m.provider_id, m.position, 0 AS lap FROM providers_membership m
          WHERE m.service_id = %(service)s AND m.role = 'pool' AND m.provider_eligible
            AND m.position > %(cursor)s
          ORDER BY m.position LIMIT %(wanted)s)
        UNION ALL
        (SELECT m.provider_id, m.position, 1 AS lap FROM providers_membership m
          WHERE m.service_id = %(service)s AND m.role = 'pool' AND m.provider_eligible
            AND m.position <= %(cursor)s
          ORDER BY m.position LIMIT %(wanted)s)
    ) AS walk
    ORDER BY lap, position LIMIT %(wanted)s
),
locked AS MATERIALIZED (
    SELECT p.id, p.name, p.status, p.remaining_quota, p.cycle FROM providers_provider p
     WHERE p.id = ANY (ARRAY (SELECT provider_id FROM mandatory
                              UNION ALL SELECT provider_id FROM eligible))
       AND (SELECT (active OR NOT %(intake)s) AND NOT queued FROM blocked)
     ORDER BY p.id
       FOR UPDATE
),
seen AS (
    (SELECT m.provider_id, m.position, p.status, p.remaining_quota
       FROM providers_membership m JOIN providers_provider p ON p.id = m.provider_id
      WHERE m.service_id = %(service)s AND m.role = 'pool' AND NOT m.provider_eligible
        AND m.position > %(cursor)s
      ORDER BY m.position LIMIT %(seen)s)
    UNION ALL
    (SELECT m.provider_id, m.position, p.status, p.remaining_quota
       FROM providers_membership m JOIN providers_provider p ON p.id = m.provider_id
      WHERE m.service_id = %(service)s AND m.role = 'pool' AND NOT m.provider_eligible
        AND m.position <= %(cursor)s
      ORDER BY m.position LIMIT %(seen)s)
)
SELECT 'unavailable', 0::bigint, 0, '', ''::varchar, 0, 0 FROM blocked WHERE NOT active
UNION ALL
SELECT 'queued', 0::bigint, 0, '', ''::varchar, 0, 0 FROM blocked WHERE queued
UNION ALL
SELECT 'mandatory', m.provider_id, m.position, l.name, l.status, l.remaining_quota, l.cycle
  FROM mandatory m JOIN locked l ON l.id = m.provider_id
UNION ALL
SELECT 'eligible', e.provider_id, e.position, l.name, l.status, l.remaining_quota, l.cycle
  FROM eligible e JOIN locked l ON l.id = e.provider_id
UNION ALL
SELECT 'seen', s.provider_id, s.position, '', s.status, s.remaining_quota, 0 FROM seen s
"""


@dataclass(frozen=True)
class LockedProvider:
    """A provider's state under its row lock, as the decision and the writes need it."""

    id: int
    name: str
    active: bool
    remaining_quota: int
    cycle: int


@dataclass(frozen=True)
class Candidates:
    unavailable: bool
    queued: bool
    mandatory: list[tuple[int, int]]  # provider_id, position, in position order
    eligible: list[tuple[int, int]]  # the first ``wanted`` eligible in walk order
    seen: list[Candidate]  # the ineligible ones the walk passes, for the trace
    locked: dict[int, LockedProvider]


def _read_candidates(
    service_id: int,
    cursor: int | None,
    *,
    wanted: int,
    before: int = MAX_BIGINT,
    intake: bool = True,
) -> Candidates:
    """Steps 2 and 3 (CANDIDATES_SQL). ``before``: only leads older than this one count as
    waiting ahead of it. ``intake``: lock nothing for an inactive service."""
    params = {
        "service": service_id,
        "before": before,
        # Positions are >= 0: with no cursor the walk starts at the first position.
        "cursor": -1 if cursor is None else cursor,
        "wanted": wanted,
        "seen": TRACE_LIMIT,
        "intake": intake,
    }
    found: dict[str, list[tuple]] = {
        kind: [] for kind in ("unavailable", "queued", "mandatory", "eligible", "seen")
    }
    with connection.cursor() as db:
        db.execute(CANDIDATES_SQL, params)
        for kind, *row in db.fetchall():
            found[kind].append(tuple(row))
    locked = {
        pid: LockedProvider(pid, name, status == Provider.Status.ACTIVE, remaining, cycle)
        for pid, _, name, status, remaining, cycle in found["mandatory"] + found["eligible"]
    }
    return Candidates(
        unavailable=bool(found["unavailable"]),
        queued=bool(found["queued"]),
        mandatory=sorted(((pid, pos) for pid, pos, *_ in found["mandatory"]), key=lambda r: r[1]),
        eligible=sorted(
            ((pid, pos) for pid, pos, *_ in found["eligible"]),
            key=lambda row: walk_key(row[1], cursor),
        ),
        seen=walk_order(
            [
                Candidate(pid, pos, status == Provider.Status.ACTIVE, remaining)
                for pid, pos, _, status, remaining, _ in found["seen"]
            ],
            cursor,
        )[:TRACE_LIMIT],
        locked=locked,
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


def _decide(
    service_id: int,
    cursor: int | None,
    *,
    slack: int,
    before: int = MAX_BIGINT,
    intake: bool = True,
) -> tuple[Decision, dict[int, LockedProvider]]:
    """Steps 2 and 3: read the candidates, lock them in pk order and apply the rule.

    At intake the service must be active (ServiceUnavailable otherwise); a drain serves the
    leads already waiting for it either way.
    """
    wanted = SLOTS + slack
    found = _read_candidates(service_id, cursor, wanted=wanted, before=before, intake=intake)
    if intake and found.unavailable:
        raise ServiceUnavailable(service_id)
    if found.queued:
        return choose_providers([], [], cursor=cursor, queued=True), {}
    covers_all_eligible = len(found.eligible) < wanted

    def under_lock(provider_id: int, position: int) -> Candidate:
        state = found.locked.get(provider_id)
        if state is None:  # never pick a provider we did not lock
            return Candidate(provider_id, position, active=False, remaining_quota=0)
        return Candidate(provider_id, position, state.active, state.remaining_quota)

    # The walk in order: every pool row we read, cut after the last eligible one (beyond it we
    # know nothing). Providers not in it sit between eligible ones and are ineligible.
    ordered = walk_order([under_lock(pid, pos) for pid, pos in found.eligible] + found.seen, cursor)
    if not covers_all_eligible:
        last_eligible = found.eligible[-1][1]
        cut = next(i for i, c in enumerate(ordered) if c.position == last_eligible)
        ordered = ordered[: cut + 1]

    decision = choose_providers(
        [under_lock(pid, pos) for pid, pos in found.mandatory], ordered, cursor=cursor
    )
    if not decision.complete and not covers_all_eligible:
        raise _CandidatesTaken
    return decision, found.locked


# Step 4 in one round trip: the lead (new, or a waiting one now allocated), its allocations,
# the quotas, the cursor and the lead.allocated event, as one statement.
# Data-modifying CTEs all run, in full, on the statement's snapshot; the rows they touch are
# the ones locked above.
#
# The engine knows nothing of delivery: delivery's own trigger on the allocation rows inserts
# a lead's deliveries within this statement (delivery migration 0006, docs/DELIVERY.md), so
# they commit or roll back with the lead and cost the engine no round trip.
ALLOCATION_WRITES_SQL = """
WITH lead AS ({lead}),
picks AS (
    SELECT * FROM unnest(%(providers)s::bigint[], %(roles)s::varchar[], %(cycles)s::integer[])
           WITH ORDINALITY AS pick(provider_id, role, cycle, rank)
),
allocations AS (
    INSERT INTO allocation_allocation (lead_id, provider_id, role, rank, cycle, created_at)
    SELECT lead.id, pick.provider_id, pick.role, pick.rank, pick.cycle, %(now)s
      FROM lead, picks AS pick
),
quotas AS (
    UPDATE providers_provider
       SET remaining_quota = remaining_quota - 1,
           leads_this_cycle = leads_this_cycle + 1,
           leads_total = leads_total + 1
     WHERE id = ANY(%(providers)s::bigint[])
),
pool_cursor AS (
    UPDATE providers_poolcursor SET position = %(cursor)s, updated_at = %(now)s
     WHERE service_id = %(service)s AND position IS DISTINCT FROM %(cursor)s
),
event AS (
    INSERT INTO events_event (type, data, created_at)
    SELECT 'lead.allocated',
           jsonb_build_object('lead_id', lead.id, 'service_id', %(service)s,
                              'provider_ids', to_jsonb(%(providers)s::bigint[]),
                              'status', 'allocated'),
           %(now)s
      FROM lead
)
SELECT lead.id FROM lead
"""

NEW_LEAD_COLUMNS = """
    INSERT INTO allocation_lead (service_id, name, phone, city, description, source, status,
                                 wait_reason, trace, created_at, allocated_at)
    VALUES (%(service)s, %(name)s, %(phone)s, %(city)s, %(description)s, %(source)s,
            %(status)s, %(wait_reason)s, %(trace)s::jsonb, %(now)s, %(allocated_at)s)
    RETURNING id"""

NEW_ALLOCATED_LEAD_SQL = ALLOCATION_WRITES_SQL.format(lead=NEW_LEAD_COLUMNS)

DRAINED_LEAD_SQL = ALLOCATION_WRITES_SQL.format(
    lead="""
    UPDATE allocation_lead
       SET status = 'allocated', wait_reason = '', trace = %(trace)s::jsonb,
           allocated_at = %(now)s
     WHERE id = %(lead)s AND status = 'waiting'
    RETURNING id"""
)

NEW_WAITING_LEAD_SQL = f"""
WITH lead AS ({NEW_LEAD_COLUMNS}),
event AS (
    INSERT INTO events_event (type, data, created_at)
    SELECT 'lead.waiting', jsonb_build_object('lead_id', lead.id, 'service_id', %(service)s),
           %(now)s
      FROM lead
)
SELECT id FROM lead
"""


def _write(sql: str, params: dict[str, object]) -> int:
    with connection.cursor() as db:
        db.execute(sql, params)
        (lead_id,) = db.fetchone()
    # The event rides in the same statement; wake the streams once it has committed.
    announce_after_commit()
    return lead_id


def _allocation_params(
    service_id: int,
    decision: Decision,
    locked: dict[int, LockedProvider],
    *,
    now: datetime,
) -> dict[str, object]:
    return {
        "service": service_id,
        "providers": [pick.provider_id for pick in decision.picks],
        "roles": [pick.role for pick in decision.picks],
        "cycles": [locked[pick.provider_id].cycle for pick in decision.picks],
        "cursor": decision.cursor,
        "trace": json.dumps(_trace(decision)),
        "now": now,
    }


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

    def attempt(slack: int) -> Intake:
        written: int | None = None
        try:
            with transaction.atomic():
                cursor = _lock_cursor(data.service_id)
                decision, locked = _decide(data.service_id, cursor, slack=slack)
                now = timezone.now()
                trace = _trace(decision)
                params: dict[str, object] = {
                    "name": data.name,
                    "phone": data.phone,
                    "city": data.city,
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


# The head of a service's waiting queue, locked, and the id of the lead behind it (a hint for
# the drain's order, read in the same round trip). Run under the service's cursor lock, which
# every drain of the service takes first: nobody else allocates these leads meanwhile.
HEAD_OF_QUEUE_SQL = """
SELECT head.id,
       (SELECT min(behind.id) FROM allocation_lead AS behind
         WHERE behind.service_id = head.service_id AND behind.status = 'waiting'
           AND behind.id > head.id)
  FROM allocation_lead AS head
 WHERE head.service_id = %s AND head.status = 'waiting'
 ORDER BY head.id
 LIMIT 1
   FOR UPDATE OF head
"""


def allocate_next_waiting(service_id: int) -> tuple[bool, int | None]:
    """Allocate the service's oldest waiting lead if 3 providers can take it.

    Return whether it was allocated, and the id of the lead waiting behind it (None if none).
    The oldest waiting lead is read under the service's cursor lock, so it is exact: a lead
    stored waiting by a transaction that committed a moment ago is not passed over.
    Lock order: the cursor, the lead's row, then the providers.
    """

    def attempt(slack: int) -> tuple[bool, int | None]:
        written: int | None = None
        try:
            with transaction.atomic():
                cursor = _lock_cursor(service_id)
                with connection.cursor() as db:
                    db.execute(HEAD_OF_QUEUE_SQL, [service_id])
                    head = db.fetchone()
                if head is None:
                    return False, None
                lead_id, behind = head
                decision, locked = _decide(
                    service_id, cursor, slack=slack, before=lead_id, intake=False
                )
                if not decision.complete:
                    return False, lead_id
                params = _allocation_params(service_id, decision, locked, now=timezone.now())
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
    """Drain the waiting queue; return how many leads it allocated.

    Leads go in global order of arrival, one transaction per lead: of all services with
    waiting leads, the one whose oldest lead is oldest goes next. A service whose oldest lead
    stays waiting keeps the rest of its leads behind it. Passes repeat until one allocates
    nothing, so capacity added meanwhile is used too. With ``deadline`` (a time.monotonic()
    value) it stops once that has passed, and leaves the rest for a later drain.
    """
    allocated = 0
    while True:
        heads = [
            (first, service_id)
            for service_id, first in Lead.objects.waiting()
            .values_list("service_id")
            .annotate(first=Min("pk"))
            .values_list("service_id", "first")
        ]
        heapq.heapify(heads)
        progressed = False
        while heads:
            if deadline is not None and time.monotonic() >= deadline:
                return allocated
            _, service_id = heapq.heappop(heads)
            try:
                done, behind = allocate_next_waiting(service_id)
            except Busy:
                logger.warning("drain: service %d busy, left for the next drain", service_id)
                done = False
            if not done:
                continue  # blocked: its later leads stay behind its oldest
            allocated += 1
            progressed = True
            if behind is not None:
                heapq.heappush(heads, (behind, service_id))
        if not progressed:
            return allocated
