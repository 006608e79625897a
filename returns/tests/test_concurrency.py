"""Returns, approvals, quota edits and quota resets at once, on real threads against PostgreSQL:
each return is decided once, credits at most one unit, the quota never goes above its maximum,
and the quota left always equals the quota less the cycle's leads plus its credits."""

from __future__ import annotations

from collections import Counter

import pytest

from allocation.models import Allocation
from events.models import Event
from leaddist.testing import storm
from providers.models import Provider
from providers.services import update_provider
from returns.models import Return
from returns.services import AlreadyDecided, AlreadyReturned, decide_return, return_lead
from returns.tests.support import allocated_lead, allocation_of
from webhooks.services import apply_quota_reset, canonical_body_sha256

pytestmark = [pytest.mark.concurrency, pytest.mark.django_db(transaction=True)]


def setup_exhausted_provider_1() -> tuple[list[Return], list]:
    """Provider 1 (quota 10) gets 10 leads; it returns 6 of them for staff to decide, and the
    other 4 allocations are left to return during the storm."""
    leads = [allocated_lead() for _ in range(10)]
    assert Provider.objects.get(pk=1).remaining_quota == 0
    pending = [
        return_lead(allocation_of(lead, 1), reason="out_of_area", who="provider:p1")
        for lead in leads[:6]
    ]
    return pending, [allocation_of(lead, 1) for lead in leads[6:]]


def decisions_per_return() -> Counter:
    return Counter(e.data["return_id"] for e in Event.objects.filter(type="return.decided"))


def test_concurrent_returns_and_approvals_credit_each_return_once(seeded_tx):
    pending, fresh = setup_exhausted_provider_1()
    jobs = [
        lambda r=r, who=who: decide_return(r, approve=True, who=who)
        for r in pending
        for who in ("staff:a", "staff:b")
    ]
    jobs += [
        lambda a=a: return_lead(a, reason="spam", who="provider:p1") for a in fresh for _ in (1, 2)
    ]

    errors = storm(jobs)

    assert Counter(type(e) for e in errors) == {AlreadyDecided: 6, AlreadyReturned: 4}
    returns = Return.objects.filter(provider_id=1)
    assert returns.count() == 10
    # Auto-approval counts every approval of the cycle (staff's too), and is capped at 3 for a
    # provider with 10 leads: decisions are serialized on the provider's row, so each spam
    # return auto-approved was at most the 3rd approval in decision order; the others wait.
    order = list(
        returns.filter(status="approved")
        .order_by("decided_at")
        .values_list("decided_by", flat=True)
    )
    auto = [position for position, who in enumerate(order, start=1) if who == "auto"]
    assert max(auto, default=0) <= 3
    spam = returns.filter(reason="spam")
    assert spam.filter(status="pending").count() == 4 - len(auto)
    assert set(decisions_per_return().values()) == {1}
    assert len(decisions_per_return()) == 6 + len(auto)
    credited = returns.filter(credited=True).count()
    assert credited == 6 + len(auto)
    provider = Provider.objects.get(pk=1)
    assert provider.remaining_quota == credited
    assert provider.remaining_quota <= provider.quota


def test_approvals_racing_a_quota_reset_never_credit_twice_nor_above_the_quota(seeded_tx, jobs):
    pending, _ = setup_exhausted_provider_1()
    storm_jobs = [
        lambda r=r, who=who: decide_return(r, approve=True, who=who)
        for r in pending
        for who in ("staff:a", "staff:b")
    ]
    storm_jobs.insert(
        len(storm_jobs) // 2,
        lambda: apply_quota_reset(
            event_id="reset-1",
            body_sha256=canonical_body_sha256({"eventId": "reset-1", "providerIds": [1]}),
            provider_ids=[1],
        ),
    )

    errors = storm(storm_jobs)

    assert Counter(type(e) for e in errors) == {AlreadyDecided: 6}, errors
    assert set(decisions_per_return().values()) == {1}
    provider = Provider.objects.get(pk=1)
    assert provider.cycle == 2
    approved = Return.objects.filter(provider_id=1, status="approved")
    assert approved.count() == 6
    # Credits made before the reset were superseded by it; after it the provider was full, so
    # an approval then credited nothing. Either way the provider ends with exactly its quota.
    assert provider.remaining_quota == provider.quota == 10
    assert not approved.filter(decided_cycle=2, credited=True).exists()
    assert set(approved.filter(decided_cycle=1).values_list("credited", flat=True)) <= {True}


def test_approvals_quota_edits_a_reset_and_leads_racing_keep_the_credits_in_the_quota(
    seeded_tx, jobs
):
    pending, _ = setup_exhausted_provider_1()
    provider = Provider.objects.get(pk=1)
    storm_jobs = [
        lambda r=r, who=who: decide_return(r, approve=True, who=who)
        for r in pending
        for who in ("staff:a", "staff:b")
    ]
    storm_jobs += [lambda q=q: update_provider(provider, quota=q) for q in (12, 8, 15, 11)]
    storm_jobs += [lambda: allocated_lead() for _ in range(6)]  # P1 is service 1's mandatory
    storm_jobs.insert(
        len(storm_jobs) // 2,
        lambda: apply_quota_reset(
            event_id="reset-edit",
            body_sha256=canonical_body_sha256({"eventId": "reset-edit", "providerIds": [1]}),
            provider_ids=[1],
        ),
    )

    errors = storm(storm_jobs)

    assert Counter(type(e) for e in errors) == {AlreadyDecided: 6}, errors
    assert set(decisions_per_return().values()) == {1}
    provider.refresh_from_db()
    assert provider.cycle == 2
    # Whatever the order, the row says what the cycle's allocations and credited returns say,
    # and the quota left is the quota less the cycle's leads plus its credits, within 0..quota.
    leads = Allocation.objects.filter(provider_id=1, cycle=provider.cycle).count()
    credits = Return.objects.filter(
        provider_id=1, credited=True, decided_cycle=provider.cycle
    ).count()
    assert provider.leads_this_cycle == leads
    assert provider.credits_this_cycle == credits
    assert provider.quota in (12, 8, 15, 11)
    assert provider.remaining_quota == min(max(provider.quota - leads + credits, 0), provider.quota)
    assert Return.objects.filter(provider_id=1, status="approved").count() == 6
