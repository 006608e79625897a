"""GET /api/leads/{id} shows the lead's returns (SPEC §9); the admin decides them."""

from __future__ import annotations

import pytest

from events.tests.support import settle_events
from returns.models import Return
from returns.services import decide_return, return_lead
from returns.tests.support import allocated_lead, allocation_of

pytestmark = pytest.mark.django_db


def test_lead_detail_lists_its_returns(admin_client, seeded):
    lead = allocated_lead()
    auto = return_lead(allocation_of(lead, 1), reason="spam", who="provider:a")
    pending = return_lead(
        allocation_of(lead, 2), reason="other", note="no answer", who="provider:b"
    )

    body = admin_client.get(f"/api/leads/{lead.pk}").json()

    assert [
        (r["id"], r["provider_id"], r["reason"], r["note"], r["status"]) for r in body["returns"]
    ] == [
        (auto.pk, 1, "spam", "", "approved"),
        (pending.pk, 2, "other", "no answer", "pending"),
    ]
    assert body["returns"][0]["decided_at"] is not None
    assert body["returns"][1]["decided_at"] is None
    assert body["returns"][0]["created_at"]
    assert len(body["providers"]) == 3  # the allocation stays


def test_a_lead_without_returns_has_an_empty_list(admin_client, seeded):
    lead = allocated_lead()

    assert admin_client.get(f"/api/leads/{lead.pk}").json()["returns"] == []


def test_staff_approve_returns_in_bulk_in_the_admin(admin_client, admin_user, seeded):
    leads = [allocated_lead() for _ in range(2)]
    rets = [
        return_lead(allocation_of(lead, 1), reason="out_of_area", who="provider:a")
        for lead in leads
    ]

    response = admin_client.post(
        "/admin/returns/return/",
        {"action": "approve_selected", "_selected_action": [r.pk for r in rets]},
        follow=True,
    )

    assert response.status_code == 200
    assert set(Return.objects.values_list("status", "decided_by")) == {
        ("approved", f"staff:{admin_user.username}")
    }
    assert seeded.provider(1).remaining_quota == 10


def test_staff_reject_returns_in_the_admin_and_see_who_returned_them(admin_client, seeded):
    ret = return_lead(allocation_of(allocated_lead(), 1), reason="out_of_area", who="provider:a")

    admin_client.post(
        "/admin/returns/return/", {"action": "reject_selected", "_selected_action": [ret.pk]}
    )
    page = admin_client.get("/admin/returns/return/")

    ret.refresh_from_db()
    assert ret.status == "rejected"
    assert "provider:a" in page.content.decode()
    assert seeded.provider(1).remaining_quota == 9


def test_the_dashboard_feed_shows_returns_and_decisions(staff_client, seeded):
    lead = allocated_lead()
    ret = return_lead(allocation_of(lead, 1), reason="out_of_area", who="provider:a")
    return_lead(allocation_of(lead, 2), reason="spam", who="provider:b")
    decide_return(ret, approve=False, who="staff:operator")
    settle_events()
    page = staff_client.get("/dashboard").content.decode()

    assert "feed-lead-returned" in page
    assert "return rejected" in page
    assert "1 lead of quota credited back" in page
