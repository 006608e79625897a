"""Returning leads, the auto-approval rule, staff decisions and the quota they credit."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import IntegrityError

from allocation.models import Allocation, Lead
from dashboard.selectors import service_cards
from events.tests.support import published_since, stream_position
from providers.models import Provider
from providers.services import update_provider
from returns.models import Return
from returns.services import (
    AlreadyDecided,
    AlreadyReturned,
    OutsideWindow,
    auto_approval_cap,
    decide_return,
    decide_returns,
    return_lead,
)
from returns.tests.support import allocated_lead, allocation_of
from webhooks.services import apply_quota_reset, canonical_body_sha256

pytestmark = pytest.mark.django_db

WHO = "provider:p1-owner"


def test_a_wrong_number_is_approved_at_once_and_credits_one_unit(seeded):
    lead = allocated_lead()
    assert seeded.provider(1).remaining_quota == 9

    ret = return_lead(allocation_of(lead, 1), reason="wrong_number", who=WHO)

    ret.refresh_from_db()
    assert ret.status == Return.Status.APPROVED
    assert ret.credited is True
    assert ret.decided_by == "auto"
    assert ret.decided_cycle == 1
    assert seeded.provider(1).remaining_quota == 10


def test_auto_approval_stops_past_three_for_a_small_provider(seeded):
    leads = [allocated_lead() for _ in range(4)]

    statuses = [
        return_lead(allocation_of(lead, 1), reason="spam", who=WHO).status for lead in leads
    ]

    assert statuses == ["approved", "approved", "approved", "pending"]
    assert seeded.provider(1).remaining_quota == 10 - 4 + 3


def test_the_cap_is_ten_percent_of_the_cycles_leads_once_above_three():
    assert auto_approval_cap(0) == 3
    assert auto_approval_cap(30) == 3
    assert auto_approval_cap(45) == 4.5
    assert auto_approval_cap(100) == 10


def test_the_cap_counts_this_cycles_approvals_only(seeded):
    Provider.objects.filter(pk=1).update(quota=50, remaining_quota=50)
    leads = [allocated_lead() for _ in range(5)]
    for lead in leads[:3]:
        return_lead(allocation_of(lead, 1), reason="spam", who=WHO)
    Provider.objects.filter(pk=1).update(cycle=2, leads_this_cycle=0)

    ret = return_lead(allocation_of(leads[3], 1), reason="duplicate", who=WHO)

    assert ret.status == Return.Status.APPROVED
    assert ret.decided_cycle == 2


def test_other_reasons_wait_for_staff_and_approval_credits(seeded):
    lead = allocated_lead()

    ret = return_lead(allocation_of(lead, 1), reason="out_of_area", who=WHO)

    assert ret.status == Return.Status.PENDING
    assert seeded.provider(1).remaining_quota == 9
    decided = decide_return(ret, approve=True, who="staff:operator")
    assert decided.status == Return.Status.APPROVED
    assert decided.credited is True
    assert decided.decided_by == "staff:operator"
    assert seeded.provider(1).remaining_quota == 10


def test_a_rejection_leaves_the_quota_as_it_is(seeded):
    ret = return_lead(allocation_of(allocated_lead(), 1), reason="other", note="rude", who=WHO)

    decided = decide_return(ret, approve=False, who="staff:operator")

    assert decided.status == Return.Status.REJECTED
    assert decided.credited is False
    assert decided.decided_at is not None
    assert seeded.provider(1).remaining_quota == 9


def test_a_decision_is_made_once(seeded):
    ret = return_lead(allocation_of(allocated_lead(), 1), reason="out_of_area", who=WHO)
    decide_return(ret, approve=True, who="staff:a")

    with pytest.raises(AlreadyDecided):
        decide_return(ret, approve=True, who="staff:b")
    with pytest.raises(AlreadyDecided):
        decide_return(ret, approve=False, who="staff:b")

    assert seeded.provider(1).remaining_quota == 10


def test_approval_never_credits_above_the_quota(seeded):
    lead = allocated_lead()
    ret = return_lead(allocation_of(lead, 1), reason="out_of_area", who=WHO)
    Provider.objects.filter(pk=1).update(remaining_quota=10)  # as a reset would

    decided = decide_return(ret, approve=True, who="staff:operator")

    assert decided.status == Return.Status.APPROVED
    assert decided.credited is False
    assert seeded.provider(1).remaining_quota == 10


def quota_state(provider_id: int) -> tuple[int, int, int, int]:
    """quota, remaining_quota, leads_this_cycle, credits_this_cycle, read from the database."""
    return Provider.objects.values_list(
        "quota", "remaining_quota", "leads_this_cycle", "credits_this_cycle"
    ).get(pk=provider_id)


def test_a_quota_edited_later_in_the_cycle_keeps_the_returns_credits(seeded):
    leads = [allocated_lead() for _ in range(10)]  # P1, mandatory, gets all 10: quota 0
    for lead in leads[:2]:
        ret = return_lead(allocation_of(lead, 1), reason="out_of_area", who=WHO)
        decide_return(ret, approve=True, who="staff:operator")
    assert quota_state(1) == (10, 2, 10, 2)

    update_provider(seeded.provider(1), quota=12)
    raised = quota_state(1)
    update_provider(seeded.provider(1), quota=5)
    lowered = quota_state(1)
    update_provider(seeded.provider(1), quota=10)
    back = quota_state(1)

    # 12 - 10 leads + 2 credits; 5 - 10 + 2 is below 0; 10 - 10 + 2: the credits stay and
    # lowering then raising the quota gives nothing else back.
    assert raised == (12, 4, 10, 2)
    assert lowered == (5, 0, 10, 2)
    assert back == (10, 2, 10, 2)


def test_a_quota_reset_starts_the_credits_afresh(seeded):
    leads = [allocated_lead() for _ in range(10)]
    ret = return_lead(allocation_of(leads[0], 1), reason="out_of_area", who=WHO)
    decide_return(ret, approve=True, who="staff:operator")
    assert quota_state(1) == (10, 1, 10, 1)

    apply_quota_reset(
        event_id="reset-credits",
        body_sha256=canonical_body_sha256({"eventId": "reset-credits", "providerIds": [1]}),
        provider_ids=[1],
    )
    after_reset = quota_state(1)
    allocated_lead()
    update_provider(seeded.provider(1), quota=11)

    assert after_reset == (10, 10, 0, 0)
    assert quota_state(1) == (11, 10, 1, 0)


def test_a_credit_while_a_lowered_quota_is_used_up_counts_without_going_above_it(seeded):
    leads = [allocated_lead() for _ in range(8)]  # P1: 8 leads this cycle, 2 left
    update_provider(seeded.provider(1), quota=5)
    assert quota_state(1) == (5, 0, 8, 0)

    ret = return_lead(allocation_of(leads[0], 1), reason="out_of_area", who=WHO)
    decided = decide_return(ret, approve=True, who="staff:operator")
    update_provider(seeded.provider(1), quota=10)

    assert decided.credited is True
    # 10 - 8 leads + 1 credit: the credit counted while the quota left stayed at 0.
    assert quota_state(1) == (10, 3, 8, 1)


def test_a_second_return_of_the_same_lead_by_the_same_provider_is_refused(seeded):
    lead = allocated_lead()
    first = return_lead(allocation_of(lead, 1), reason="out_of_area", who=WHO)

    with pytest.raises(AlreadyReturned) as refused:
        return_lead(allocation_of(lead, 1), reason="spam", who=WHO)

    assert refused.value.existing.pk == first.pk
    assert Return.objects.count() == 1
    # Another provider of the same lead may return it too.
    assert return_lead(allocation_of(lead, 2), reason="spam", who="provider:x").pk != first.pk


def test_a_return_after_the_window_is_refused_and_stores_nothing(seeded, settings):
    settings.RETURN_WINDOW_DAYS = 7
    lead = allocated_lead()
    Allocation.objects.filter(lead=lead).update(
        created_at=lead.created_at - timedelta(days=7, minutes=1)
    )

    with pytest.raises(OutsideWindow, match="within 7 days"):
        return_lead(allocation_of(lead, 1), reason="wrong_number", who=WHO)

    assert Return.objects.count() == 0
    assert seeded.provider(1).remaining_quota == 9


def test_the_database_refuses_other_without_a_note(seeded):
    lead = allocated_lead()

    with pytest.raises(IntegrityError):
        Return.objects.create(
            lead=lead,
            provider_id=1,
            allocation=allocation_of(lead, 1),
            reason="other",
            note="",
            cycle=1,
            returned_by=WHO,
        )


def test_returns_and_decisions_are_events(seeded):
    lead = allocated_lead()
    position = stream_position()

    auto = return_lead(allocation_of(lead, 1), reason="spam", who=WHO)
    pending = return_lead(allocation_of(lead, 2), reason="out_of_area", who="provider:p2")
    decide_return(pending, approve=False, who="staff:operator")

    events = [(t, d) for t, d in published_since(position) if t != "provider.updated"]
    assert events == [
        (
            "lead.returned",
            {
                "return_id": auto.pk,
                "lead_id": lead.pk,
                "provider_id": 1,
                "reason": "spam",
                "status": "pending",
            },
        ),
        (
            "return.decided",
            {
                "return_id": auto.pk,
                "lead_id": lead.pk,
                "provider_id": 1,
                "reason": "spam",
                "status": "approved",
                "credited": True,
            },
        ),
        (
            "lead.returned",
            {
                "return_id": pending.pk,
                "lead_id": lead.pk,
                "provider_id": 2,
                "reason": "out_of_area",
                "status": "pending",
            },
        ),
        (
            "return.decided",
            {
                "return_id": pending.pk,
                "lead_id": lead.pk,
                "provider_id": 2,
                "reason": "out_of_area",
                "status": "rejected",
                "credited": False,
            },
        ),
    ]


def test_an_approval_drains_leads_that_waited_for_the_credited_provider(
    seeded, django_capture_on_commit_callbacks
):
    Provider.objects.filter(pk=1).update(quota=1, remaining_quota=1)
    Provider.objects.filter(pk=4).update(status="paused")
    first = allocated_lead()
    waiting = allocated_lead()
    assert waiting.status == Lead.Status.WAITING
    ret = return_lead(allocation_of(first, 1), reason="out_of_area", who=WHO)

    with django_capture_on_commit_callbacks(execute=True):
        decide_return(ret, approve=True, who="staff:operator")

    waiting.refresh_from_db()
    assert waiting.status == Lead.Status.ALLOCATED
    assert seeded.provider(1).remaining_quota == 0


def test_returned_leads_still_count_in_the_fairness_chart_and_the_counters(seeded):
    leads = [allocated_lead() for _ in range(3)]
    before = {
        (card.service.pk, chip.provider_id): chip.pool_leads
        for card in service_cards()
        for chip in card.pool
    }
    counters = list(Provider.objects.values_list("pk", "leads_this_cycle", "leads_total"))

    for lead in leads:  # each lead's first pool provider returns it
        pool = lead.allocations.filter(role="pool").order_by("rank").first()
        return_lead(pool, reason="spam", who="provider:p")

    after = {
        (card.service.pk, chip.provider_id): chip.pool_leads
        for card in service_cards()
        for chip in card.pool
    }
    assert Return.objects.filter(status="approved").count() == 3
    assert sum(before.values()) == 6
    assert after == before
    assert list(Provider.objects.values_list("pk", "leads_this_cycle", "leads_total")) == counters


def test_bulk_decisions_skip_returns_decided_already(seeded):
    leads = [allocated_lead() for _ in range(3)]
    rets = [return_lead(allocation_of(lead, 1), reason="out_of_area", who=WHO) for lead in leads]
    decide_return(rets[0], approve=False, who="staff:a")

    decided, skipped = decide_returns([r.pk for r in rets], approve=True, who="staff:b")

    assert (decided, skipped) == (2, 1)
    assert seeded.provider(1).remaining_quota == 10 - 3 + 2
