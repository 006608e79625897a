"""Returning leads and deciding returns (SPEC §9). Each function owns its transaction.

Lock order, the engine's (providers/locks.py) and then this app's rows: the cursors of the
provider's services by service id, then the provider, then the return row. Every transaction
here takes the provider first, so a provider's returns, approvals and credits are serialized
with each other, with the quota reset (which locks the same cursors and providers) and with
allocations; and the auto-approval count, read under that lock, cannot be raced past.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from allocation.models import Allocation
from allocation.services import run_with_retries
from events.services import record_event
from events.types import LEAD_RETURNED, RETURN_DECIDED
from leaddist.http.audit import log_event
from providers.locks import lock_providers_with_services
from providers.models import Provider
from providers.services import credit_quota
from returns.models import Return


class AlreadyReturned(Exception):
    """This provider returned this lead before (409)."""

    def __init__(self, existing: Return) -> None:
        super().__init__(f"Lead #{existing.lead_id} was already returned (return #{existing.pk}).")
        self.existing = existing


class OutsideWindow(Exception):
    """The lead was given to the provider more than RETURN_WINDOW_DAYS ago (422)."""

    def __init__(self, deadline: datetime) -> None:
        days = settings.RETURN_WINDOW_DAYS
        super().__init__(
            f"Leads can be returned within {days} day{'s' if days != 1 else ''} of their "
            f"allocation; this one could be returned until {deadline.isoformat()}."
        )
        self.deadline = deadline


class AlreadyDecided(Exception):
    """The return was approved or rejected already; a decision is never changed."""


def return_deadline(allocation: Allocation) -> datetime:
    """Until when the provider of this allocation may return its lead."""
    return allocation.created_at + timedelta(days=settings.RETURN_WINDOW_DAYS)


def auto_approval_cap(leads_this_cycle: int) -> float:
    """How many returns a provider may have approved at once in a cycle: the larger of 3 and
    RETURN_AUTO_APPROVE_PERCENT % of its leads this cycle."""
    return max(3, settings.RETURN_AUTO_APPROVE_PERCENT * leads_this_cycle / 100)


def _announce(event_type: str, ret: Return) -> None:
    data = {
        "return_id": ret.pk,
        "lead_id": ret.lead_id,
        "provider_id": ret.provider_id,
        "reason": ret.reason,
        "status": ret.status,
    }
    if event_type == RETURN_DECIDED:
        data["credited"] = ret.credited
    record_event(event_type, data)


def _approve(ret: Return, provider: Provider, *, who: str) -> None:
    """Approve a pending return whose provider is locked: credit a unit, once (the pending →
    approved change and the credit commit together, under the provider's lock)."""
    ret.credited = credit_quota(provider)
    provider.refresh_from_db(fields=["remaining_quota", "cycle"])
    ret.status = Return.Status.APPROVED
    ret.decided_cycle = provider.cycle
    ret.decided_by = who
    ret.decided_at = timezone.now()


@dataclass(frozen=True)
class _Audit:
    action: str
    ret: Return
    who: str
    started: float

    def __call__(self) -> None:
        log_event(
            self.action,
            started=self.started,
            who=self.who,
            return_id=self.ret.pk,
            lead_id=self.ret.lead_id,
            provider_id=self.ret.provider_id,
            reason=self.ret.reason,
            status=self.ret.status,
            credited=self.ret.credited if self.ret.status == Return.Status.APPROVED else None,
        )


def return_lead(allocation: Allocation, *, reason: str, note: str = "", who: str) -> Return:
    """Record the allocation's provider returning its lead; approve it at once when SPEC §9's
    auto-approval rule allows.

    1. Lock the provider's services' cursors, then the provider.
    2. Insert the return (one per lead and provider: a unique constraint, so a concurrent
       second return waits for this one and then fails with AlreadyReturned).
    3. Refuse it (OutsideWindow) past RETURN_WINDOW_DAYS after the allocation.
    4. A wrong_number, duplicate or spam return is approved, crediting one unit of quota,
       while the provider's approved returns this cycle, this one included, stay within
       auto_approval_cap; any other stays pending for staff.
    5. Record lead.returned (and return.decided when approved); audit line after commit.
    """
    started = time.monotonic()
    # Conflicts that persist (lock timeouts) end in Busy, like the engine's: 503 with Retry-After.
    return run_with_retries(lambda _slack: _return_lead(allocation, reason, note, who, started))


def _return_lead(
    allocation: Allocation, reason: str, note: str, who: str, started: float
) -> Return:
    with transaction.atomic():
        _, providers = lock_providers_with_services([allocation.provider_id])
        provider = providers[allocation.provider_id]
        ret = Return(
            lead_id=allocation.lead_id,
            provider=provider,
            allocation=allocation,
            reason=reason,
            note=note,
            cycle=provider.cycle,
            returned_by=who,
        )
        try:
            with transaction.atomic():
                ret.save()
        except IntegrityError:
            existing = Return.objects.filter(
                lead_id=allocation.lead_id, provider_id=allocation.provider_id
            ).first()
            if existing is None:
                raise
            raise AlreadyReturned(existing) from None
        deadline = return_deadline(allocation)
        if ret.created_at > deadline:
            raise OutsideWindow(deadline)
        _announce(LEAD_RETURNED, ret)
        if reason in Return.AUTO_APPROVABLE:
            approved = Return.objects.approved_in_cycle(provider).count()
            if approved + 1 <= auto_approval_cap(provider.leads_this_cycle):
                _approve(ret, provider, who="auto")
                ret.save()
                _announce(RETURN_DECIDED, ret)
        transaction.on_commit(_Audit("lead_return", ret, who, started))
    return ret


def decide_return(ret: Return, *, approve: bool, who: str) -> Return:
    """Approve (crediting one unit of quota, never above the quota) or reject a pending return.

    Exactly once: the return is read again under the provider's lock, and a return no longer
    pending raises AlreadyDecided, so two staff approving it at once credit it once.
    """
    started = time.monotonic()
    return run_with_retries(lambda _slack: _decide_return(ret, approve, who, started))


def _decide_return(ret: Return, approve: bool, who: str, started: float) -> Return:
    with transaction.atomic():
        _, providers = lock_providers_with_services([ret.provider_id])
        locked = Return.objects.select_for_update().get(pk=ret.pk)
        if locked.status != Return.Status.PENDING:
            raise AlreadyDecided(f"Return #{locked.pk} is {locked.status} already.")
        if approve:
            _approve(locked, providers[ret.provider_id], who=who)
        else:
            locked.status = Return.Status.REJECTED
            locked.decided_by = who
            locked.decided_at = timezone.now()
        locked.save()
        _announce(RETURN_DECIDED, locked)
        transaction.on_commit(_Audit("return_decided", locked, who, started))
    return locked


def decide_returns(return_ids: list[int], *, approve: bool, who: str) -> tuple[int, int]:
    """Decide several returns, each in its own transaction, by id; returns already decided are
    skipped. Return how many were decided and how many skipped."""
    decided = skipped = 0
    for ret in Return.objects.filter(pk__in=return_ids).order_by("pk"):
        try:
            decide_return(ret, approve=approve, who=who)
        except AlreadyDecided:
            skipped += 1
        else:
            decided += 1
    return decided, skipped
