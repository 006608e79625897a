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

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from django.conf import settings
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import F, QuerySet
from django.dispatch import receiver
from django.utils import timezone

from allocation import events
from allocation.engine import (
    SLOTS,
    TRACE_LIMIT,
    Candidate,
    Decision,
    choose_providers,
    walk_order,
)
from allocation.models import Allocation, ApiKey, Lead
from providers.models import PoolCursor, Provider
from providers.services import lock_cursors
from providers.signals import capacity_added

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
    """Run ``attempt(slack)`` until it commits; retry transient conflicts, then raise Busy."""
    slack = INITIAL_SLACK
    attempts = settings.ALLOCATION_MAX_ATTEMPTS
    for number in range(1, attempts + 1):
        try:
            return attempt(slack)
        except _CandidatesTaken:
            logger.debug("candidates taken by another service, attempt %d/%d", number, attempts)
            slack *= 2
        except OperationalError as exc:
            if not _is_transient(exc):
                raise
            logger.info("allocation conflict (%s), attempt %d/%d", exc.__cause__, number, attempts)
        if number < attempts:
            # Jittered backoff so that colliding transactions do not collide again.
            time.sleep(random.uniform(0, 0.005 * 2**number))
    raise Busy(retry_after=settings.BUSY_RETRY_AFTER_SECONDS)


# Every candidate row the decision needs, in one round trip, each branch through an index:
# the mandatory memberships; the next eligible pool memberships after the cursor, then from the
# start (partial index membership_eligible_walk); and the next ineligible ones the same way,
# for the trace (membership_ineligible_walk). A branch may read a few rows more than needed;
# Python trims them.
CANDIDATES_SQL = """
(SELECT 'mandatory', m.provider_id, m.position, p.status, p.remaining_quota
   FROM providers_membership m JOIN providers_provider p ON p.id = m.provider_id
  WHERE m.service_id = %(service)s AND m.role = 'mandatory'
  ORDER BY m.position)
UNION ALL
(SELECT 'eligible', m.provider_id, m.position, p.status, p.remaining_quota
   FROM providers_membership m JOIN providers_provider p ON p.id = m.provider_id
  WHERE m.service_id = %(service)s AND m.role = 'pool' AND m.provider_eligible
    AND m.position > %(cursor)s
  ORDER BY m.position LIMIT %(wanted)s)
UNION ALL
(SELECT 'eligible', m.provider_id, m.position, p.status, p.remaining_quota
   FROM providers_membership m JOIN providers_provider p ON p.id = m.provider_id
  WHERE m.service_id = %(service)s AND m.role = 'pool' AND m.provider_eligible
    AND m.position <= %(cursor)s
  ORDER BY m.position LIMIT %(wanted)s)
UNION ALL
(SELECT 'seen', m.provider_id, m.position, p.status, p.remaining_quota
   FROM providers_membership m JOIN providers_provider p ON p.id = m.provider_id
  WHERE m.service_id = %(service)s AND m.role = 'pool' AND NOT m.provider_eligible
    AND m.position > %(cursor)s
  ORDER BY m.position LIMIT %(seen)s)
UNION ALL
(SELECT 'seen', m.provider_id, m.position, p.status, p.remaining_quota
   FROM providers_membership m JOIN providers_provider p ON p.id = m.provider_id
  WHERE m.service_id = %(service)s AND m.role = 'pool' AND NOT m.provider_eligible
    AND m.position <= %(cursor)s
  ORDER BY m.position LIMIT %(seen)s)
"""

Row = tuple[int, int, str, int]  # provider_id, position, status, remaining_quota


def _read_candidates(
    service_id: int, cursor: int | None, *, wanted: int
) -> tuple[list[Row], list[Row], list[Row]]:
    """Mandatory rows, then the first ``wanted`` eligible and the first TRACE_LIMIT ineligible
    pool rows in walk order; unlocked reads, taken under the cursor lock."""
    params = {
        "service": service_id,
        # Positions are >= 0: with no cursor the walk starts at the first position.
        "cursor": -1 if cursor is None else cursor,
        "wanted": wanted,
        "seen": TRACE_LIMIT,
    }
    rows: dict[str, list[Row]] = {"mandatory": [], "eligible": [], "seen": []}
    with connection.cursor() as db:
        db.execute(CANDIDATES_SQL, params)
        for kind, *row in db.fetchall():
            rows[kind].append(tuple(row))
    return rows["mandatory"], rows["eligible"][:wanted], rows["seen"][:TRACE_LIMIT]


def _decide(
    service_id: int, cursor: PoolCursor, *, queued: bool, slack: int
) -> tuple[Decision, dict[int, Provider]]:
    """Steps 2 and 3: read the candidates, lock them in pk order and apply the rule."""
    if queued:
        return choose_providers([], [], cursor=cursor.position, queued=True), {}

    wanted = SLOTS + slack
    mandatory, eligible_rows, seen_rows = _read_candidates(
        service_id, cursor.position, wanted=wanted
    )
    covers_all_eligible = len(eligible_rows) < wanted

    # The walk in order: every row we read, cut after the last eligible one we read (beyond it
    # we know nothing). Providers not in it sit between eligible ones and are ineligible.
    read = {
        position: Candidate(pid, position, status == Provider.Status.ACTIVE, remaining)
        for pid, position, status, remaining in seen_rows + eligible_rows
    }
    ordered = walk_order(list(read.values()), cursor.position)
    if not covers_all_eligible:
        last_eligible = eligible_rows[-1][1]
        cut = next(i for i, c in enumerate(ordered) if c.position == last_eligible)
        ordered = ordered[: cut + 1]

    lock_ids = {row[0] for row in mandatory} | {c.provider_id for c in ordered if c.eligible}
    locked = {
        p.pk: p
        for p in Provider.objects.select_for_update()
        .filter(pk__in=lock_ids)
        .order_by("pk")
        .only("id", "status", "remaining_quota", "cycle")
    }

    def under_lock(c: Candidate) -> Candidate:
        state = locked.get(c.provider_id)
        if state is None:
            # Never pick a provider we did not lock; one we did not lock read as ineligible.
            return replace(c, remaining_quota=0) if c.eligible else c
        return replace(
            c, active=state.status == Provider.Status.ACTIVE, remaining_quota=state.remaining_quota
        )

    decision = choose_providers(
        [under_lock(Candidate(pid, pos, False, 0)) for pid, pos, *_ in mandatory],
        [under_lock(c) for c in ordered],
        cursor=cursor.position,
    )
    if not decision.complete and not covers_all_eligible:
        raise _CandidatesTaken
    return decision, locked


def _record_allocation(
    lead: Lead, decision: Decision, cursor: PoolCursor, locked: dict[int, Provider]
) -> None:
    """Step 4 for a complete decision: allocations, quotas and cursor."""
    now = timezone.now()
    Allocation.objects.bulk_create(
        Allocation(
            lead=lead,
            provider_id=pick.provider_id,
            role=pick.role,
            rank=rank,
            cycle=locked[pick.provider_id].cycle,
            created_at=now,
        )
        for rank, pick in enumerate(decision.picks, start=1)
    )
    Provider.objects.filter(pk__in=decision.provider_ids).update(
        remaining_quota=F("remaining_quota") - 1,
        leads_this_cycle=F("leads_this_cycle") + 1,
        leads_total=F("leads_total") + 1,
    )
    if decision.cursor != cursor.position:
        PoolCursor.objects.filter(pk=cursor.pk).update(position=decision.cursor, updated_at=now)


def _trace(decision: Decision) -> list[dict[str, object]]:
    return [entry.as_dict() for entry in decision.trace]


def submit_lead(data: LeadInput) -> Lead:
    """Store a new lead allocated to exactly 3 providers, or waiting; never anything between.

    Raises DuplicateLead when (phone, service) exists, Busy when conflicts persist.
    """

    def attempt(slack: int) -> Lead:
        with transaction.atomic():
            cursor = lock_cursors([data.service_id])[data.service_id]
            queued = Lead.objects.waiting().for_service(data.service_id).exists()
            decision, locked = _decide(data.service_id, cursor, queued=queued, slack=slack)
            now = timezone.now()
            lead = Lead.objects.create(
                service_id=data.service_id,
                name=data.name,
                phone=data.phone,
                city=data.city,
                description=data.description,
                source=data.source,
                status=Lead.Status.ALLOCATED if decision.complete else Lead.Status.WAITING,
                wait_reason=decision.wait_reason or "",
                trace=_trace(decision),
                created_at=now,
                allocated_at=now if decision.complete else None,
            )
            if decision.complete:
                _record_allocation(lead, decision, cursor, locked)
            # Sent after the commit only: a retried or rolled-back attempt announces nothing.
            events.lead_stored(
                lead_id=lead.pk,
                service_id=data.service_id,
                status=lead.status,
                provider_ids=decision.provider_ids if decision.complete else (),
            )
        return lead

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


def allocate_waiting_lead(lead_id: int) -> bool:
    """Try once more to allocate one waiting lead, keeping its place; True if it was allocated."""

    def attempt(slack: int) -> bool:
        service_id = Lead.objects.filter(pk=lead_id).values_list("service_id", flat=True).first()
        if service_id is None:
            return False
        with transaction.atomic():
            cursor = lock_cursors([service_id])[service_id]
            lead = (
                Lead.objects.select_for_update()
                .filter(pk=lead_id, status=Lead.Status.WAITING)
                .first()
            )
            if lead is None:
                return False  # another drain got there first
            queued = Lead.objects.waiting().for_service(service_id).filter(pk__lt=lead_id).exists()
            decision, locked = _decide(service_id, cursor, queued=queued, slack=slack)
            if not decision.complete:
                return False
            lead.status = Lead.Status.ALLOCATED
            lead.wait_reason = ""
            lead.trace = _trace(decision)
            lead.allocated_at = timezone.now()
            lead.save(update_fields=["status", "wait_reason", "trace", "allocated_at"])
            _record_allocation(lead, decision, cursor, locked)
            events.lead_stored(
                lead_id=lead.pk,
                service_id=service_id,
                status=lead.status,
                provider_ids=decision.provider_ids,
            )
        return True

    return run_with_retries(attempt)


def allocate_waiting_leads(*, batch_size: int = 500) -> int:
    """Drain the waiting queue in order of arrival, one transaction per lead; return how many.

    Once a lead of a service stays waiting, the later leads of that service stay behind it,
    so the drain moves on to other services.
    """
    allocated = 0
    blocked: set[int] = set()
    last_id = 0
    while True:
        batch = list(
            Lead.objects.waiting()
            .filter(pk__gt=last_id)
            .order_by("pk")
            .values_list("pk", "service_id")[:batch_size]
        )
        if not batch:
            return allocated
        for lead_id, service_id in batch:
            last_id = lead_id
            if service_id in blocked:
                continue
            try:
                done = allocate_waiting_lead(lead_id)
            except Busy:
                logger.warning("drain: lead %d busy, left waiting for the next drain", lead_id)
                done = False
            if done:
                allocated += 1
            else:
                blocked.add(service_id)


@receiver(capacity_added)
def drain_after_capacity_added(sender: object, service_ids: list[int], **kwargs: object) -> None:
    """A provider resumed, a quota was raised or a membership added: serve who was waiting."""
    allocate_waiting_leads()


def create_api_key(*, name: str) -> tuple[ApiKey, str]:
    """Create a key for a lead source; return it with the raw key, which is never stored."""
    raw = ApiKey.generate()
    key = ApiKey.objects.create(
        name=name, key_hash=ApiKey.hash_key(raw), key_prefix=raw[: len(ApiKey.PREFIX) + 6]
    )
    return key, raw


def revoke_api_keys(keys: QuerySet[ApiKey]) -> int:
    """Revoke the keys not yet revoked; a revoked key is refused at once. Return how many."""
    return keys.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
