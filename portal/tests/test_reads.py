"""The portal's reads (SPEC §9): one provider's leads, newest first, searchable; its numbers."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from delivery.endpoints import set_endpoint
from providers.models import Provider
from returns.services import return_lead
from returns.tests.support import allocated_lead, allocation_of

pytestmark = pytest.mark.django_db


def test_the_list_has_this_providers_leads_newest_first_with_their_details(provider_client):
    # Service 1: P1 + (P2, P3), P1 + (P4, P2), P1 + (P3, P4): provider 2 gets leads 1 and 2.
    first = allocated_lead(name="Ada One", phone="+15551110001", city="Oslo", description="Roof")
    second = allocated_lead(name="Bob Two", phone="+15551110002")
    third = allocated_lead(name="Cy Three")

    body = provider_client.get("/portal/api/leads").json()

    assert body["count"] == 2
    assert [item["id"] for item in body["items"]] == [second.pk, first.pk]
    assert third.pk not in [item["id"] for item in body["items"]]
    item = body["items"][1]
    assert item["name"] == "Ada One"
    assert item["phone"] == "+15551110001"
    assert item["city"] == "Oslo"
    assert item["description"] == "Roof"
    assert item["service"] == {"id": 1, "slug": "service-1", "name": "Service 1"}
    assert item["role"] == "pool"
    assert item["rank"] == 2
    assert item["created_at"]
    assert item["allocated_at"]
    assert item["deliveries"] == []  # no endpoint: nothing to deliver, and no error
    assert item["return"] is None
    assert body["items"][0]["rank"] == 3


def test_the_list_pages_and_searches_by_name_or_phone(provider_client):
    leads = [
        allocated_lead(name=f"Customer {n}", phone=f"+1555222{n:04d}", service_id=3)
        for n in range(5)
    ]
    # Service 3: P1, P4 + one pool provider in turn: P2 gets the first lead.
    mine = [lead for lead in leads if lead.allocations.filter(provider_id=2).exists()]

    page = provider_client.get("/portal/api/leads", {"limit": 1, "offset": 0}).json()
    by_name = provider_client.get("/portal/api/leads", {"q": "customer 0"}).json()
    by_phone = provider_client.get("/portal/api/leads", {"q": "555-2220000"}).json()
    nobody = provider_client.get("/portal/api/leads", {"q": "Nobody"}).json()

    assert page["count"] == len(mine)
    assert len(page["items"]) == 1
    assert [i["id"] for i in by_name["items"]] == [leads[0].pk]
    assert [i["id"] for i in by_phone["items"]] == [leads[0].pk]
    assert nobody == {"items": [], "count": 0}


def test_the_list_reads_the_deliveries_of_a_whole_page_in_one_query(
    provider_client, django_assert_num_queries
):
    set_endpoint(Provider.objects.get(pk=2), email="leads@p2.example", who="test")
    leads = [allocated_lead() for _ in range(9)]  # P2 gets 2 of every 3
    with CaptureQueriesContext(connection) as one_item:
        provider_client.get("/portal/api/leads", {"limit": 1})

    with django_assert_num_queries(len(one_item)):
        body = provider_client.get("/portal/api/leads", {"limit": 6}).json()

    assert len(body["items"]) == 6
    mine = [lead.pk for lead in leads if lead.allocations.filter(provider_id=2).exists()]
    assert [item["id"] for item in body["items"]] == sorted(mine, reverse=True)
    for item in body["items"]:
        assert [(d["channel"], d["status"]) for d in item["deliveries"]] == [("email", "pending")]


@pytest.mark.parametrize(
    "query", [{"limit": "0"}, {"limit": "101"}, {"limit": "x"}, {"offset": "-1"}, {"stauts": "1"}]
)
def test_bad_list_parameters_are_422(provider_client, query):
    response = provider_client.get("/portal/api/leads", query)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


def test_one_lead_and_its_return(provider_client):
    lead = allocated_lead()
    ret = return_lead(allocation_of(lead, 2), reason="spam", who="provider:p2-owner")

    body = provider_client.get(f"/portal/api/leads/{lead.pk}").json()

    assert body["id"] == lead.pk
    assert body["return"]["id"] == ret.pk
    assert body["return"]["status"] == "approved"
    assert body["return"]["reason"] == "spam"


def test_the_numbers_of_the_provider(provider_client):
    leads = [allocated_lead() for _ in range(3)]  # P2 gets the first two
    # Today and this week are the caps' counters (the engine's, in the provider's timezone): a
    # lead counted on another day, as a day of the week before, is in neither.
    Provider.objects.filter(pk=2).update(
        cap_day=timezone.localdate() - timedelta(days=8),
        cap_day_count=1,
        cap_week=timezone.localdate() - timedelta(days=8 + timezone.localdate().weekday()),
        cap_week_count=1,
    )
    return_lead(allocation_of(leads[1], 2), reason="out_of_area", who="provider:p2-owner")

    body = provider_client.get("/portal/api/provider").json()

    assert body["id"] == 2
    assert body["quota"] == 10
    assert body["remaining_quota"] == 8
    assert body["cycle"] == 1
    assert body["leads_this_cycle"] == 2
    assert body["leads_today"] == 0
    assert body["leads_this_week"] == 0
    assert body["daily_cap"] is None
    assert body["weekly_cap"] is None
    assert body["returns_this_cycle"] == 1
    assert body["return_rate"] == 0.5
    assert Provider.objects.get(pk=2).remaining_quota == 8


def test_the_page_shows_the_numbers_and_the_leads(provider_client):
    lead = allocated_lead(name="Visible Customer")

    page = provider_client.get("/portal/").content.decode()

    assert "Provider 2" in page
    assert "Visible Customer" in page
    assert f'id="lead-{lead.pk}"' in page
    assert "Quota left" in page
    assert 'data-stream-url="/portal/api/events"' in page


def test_the_page_searches_and_its_row_fragment_renders_one_lead(provider_client):
    lead = allocated_lead(name="Findable Person")
    allocated_lead(name="Other Person")

    found = provider_client.get("/portal/", {"q": "findable"}).content.decode()
    row = provider_client.get(f"/portal/leads/{lead.pk}/row").content.decode()

    assert "Findable Person" in found
    assert "Other Person" not in found
    assert row.startswith(f'<tr id="lead-{lead.pk}"')
