"""SPEC §6: /test-tools fans each button out into real concurrent requests to the app.

The fan-out's HTTP client is routed into the app in this process (httpx's ASGI transport):
the requests run the real middleware, authentication, signatures and engine, in threads of
their own, on committed data.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest
from django.test import Client
from standardwebhooks import Webhook

from allocation.models import Lead
from dashboard import testtools
from leaddist.asgi import application
from providers.models import Provider
from webhooks.models import ProcessedEvent
from webhooks.tests.helpers import SECRET

FETCH = {"X-Requested-With": "fetch"}
ACTIONS = ["/test-tools/leads", "/test-tools/webhook", "/test-tools/reset"]


@pytest.fixture
def in_process(monkeypatch):
    """Send the fan-out's requests to this process's ASGI application."""
    monkeypatch.setattr(testtools, "make_transport", lambda: httpx.ASGITransport(app=application))


@pytest.fixture
def signed(settings):
    settings.WEBHOOK_SECRET = SECRET
    return SECRET


def outcomes(html: str) -> list[str]:
    return re.findall(r'data-outcome="([a-z]+)"', html)


# --- Access ----------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("path", ACTIONS)
def test_anonymous_users_cannot_fire_the_tools(path):
    response = Client().post(path)

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@pytest.mark.django_db
@pytest.mark.parametrize("path", ACTIONS)
def test_non_staff_users_cannot_fire_the_tools(plain_client, path):
    assert plain_client.post(path).status_code == 403


@pytest.mark.django_db
@pytest.mark.parametrize("path", ACTIONS)
def test_tools_take_posts_only(staff_client, path):
    assert staff_client.get(path).status_code == 405


@pytest.mark.django_db
def test_tool_forms_post_with_their_csrf_token(staff_user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff_user)

    refused = client.post("/test-tools/reset", headers=FETCH)

    assert refused.status_code == 403
    page = client.get("/test-tools").content.decode()
    assert page.count('name="csrfmiddlewaretoken"') == 3


@pytest.mark.django_db
def test_the_webhook_secret_never_reaches_the_page(signed, staff_client):
    page = staff_client.get("/test-tools").content.decode()

    assert signed not in page
    assert signed.removeprefix("whsec_") not in page
    assert "signed with the webhook secret" in page


# --- Generate 10 concurrent leads ------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_generate_leads_sends_ten_concurrent_leads_as_the_staff_user(
    seeded_tx, staff_client, in_process
):
    response = staff_client.post("/test-tools/leads", headers=FETCH)

    html = response.content.decode()
    assert response.status_code == 200
    assert response["X-Fragment"] == "1"
    assert outcomes(html) == ["allocated"] * 10
    leads = Lead.objects.all()
    assert leads.count() == 10
    assert {lead.source for lead in leads} == {"staff:operator"}
    assert len({lead.phone for lead in leads}) == 10
    assert sorted(lead.service_id for lead in leads) == [1] * 4 + [2] * 3 + [3] * 3
    for lead in leads:
        assert f"lead #{lead.pk} →" in html


@pytest.mark.django_db(transaction=True)
def test_generate_leads_shows_waiting_outcomes(seeded_tx, staff_client, in_process):
    Provider.objects.update(remaining_quota=0)

    response = staff_client.post("/test-tools/leads", headers=FETCH)

    assert outcomes(response.content.decode()) == ["waiting"] * 10
    assert Lead.objects.waiting().count() == 10


@pytest.mark.django_db(transaction=True)
def test_generate_leads_shows_errors_the_app_answered(seeded_tx, staff_client, monkeypatch):
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            503, json={"error": {"code": "busy", "message": "The allocation engine is busy."}}
        )

    monkeypatch.setattr(testtools, "make_transport", lambda: httpx.MockTransport(refuse))

    response = staff_client.post("/test-tools/leads", headers=FETCH)

    html = response.content.decode()
    assert outcomes(html) == ["error"] * 10
    assert "busy: The allocation engine is busy." in html


@pytest.mark.django_db
def test_generate_leads_without_javascript_renders_the_whole_page(
    seeded, staff_client, monkeypatch
):
    def allocate(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            201,
            json={"id": 1, "status": "allocated", "providers": [{"name": "Provider 1"}]},
        )

    monkeypatch.setattr(testtools, "make_transport", lambda: httpx.MockTransport(allocate))

    response = staff_client.post("/test-tools/leads")

    html = response.content.decode()
    assert "<h1>Test tools</h1>" in html
    assert outcomes(html) == ["allocated"] * 10


# --- Webhook ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_same_event_fired_three_times_applies_once(seeded_tx, signed, staff_client, in_process):
    Provider.objects.update(remaining_quota=0)

    response = staff_client.post("/test-tools/webhook", {"copies": "3"}, headers=FETCH)

    assert sorted(outcomes(response.content.decode())) == ["applied", "duplicate", "duplicate"]
    assert ProcessedEvent.objects.count() == 1
    assert set(Provider.objects.values_list("remaining_quota", flat=True)) == {10}


@pytest.mark.django_db(transaction=True)
def test_number_of_deliveries_is_bounded(seeded_tx, signed, staff_client, in_process):
    response = staff_client.post("/test-tools/webhook", {"copies": "500"}, headers=FETCH)

    assert len(outcomes(response.content.decode())) == testtools.MAX_DELIVERIES


@pytest.mark.django_db(transaction=True)
def test_reset_quotas_sends_one_signed_delivery_with_a_new_event_id(
    seeded_tx, signed, staff_client, in_process
):
    Provider.objects.update(remaining_quota=0)

    first = staff_client.post("/test-tools/reset", headers=FETCH)
    second = staff_client.post("/test-tools/reset", headers=FETCH)

    assert outcomes(first.content.decode()) == ["applied"]
    assert outcomes(second.content.decode()) == ["applied"]
    assert ProcessedEvent.objects.count() == 2
    assert set(Provider.objects.values_list("cycle", flat=True)) == {3}


@pytest.mark.django_db
def test_deliveries_share_one_event_id_and_are_each_signed(signed, staff_client, monkeypatch):
    delivered: list[tuple[str, str]] = []

    def gateway_check(request: httpx.Request) -> httpx.Response:
        Webhook(signed).verify(request.content, dict(request.headers))  # raises if not signed
        event_id = json.loads(request.content)["eventId"]
        delivered.append((event_id, request.headers["webhook-id"]))
        return httpx.Response(200, json={"status": "duplicate", "eventId": event_id})

    monkeypatch.setattr(testtools, "make_transport", lambda: httpx.MockTransport(gateway_check))

    staff_client.post("/test-tools/webhook", {"copies": "4"}, headers=FETCH)

    assert len(delivered) == 4
    assert len({event_id for event_id, _ in delivered}) == 1
    assert len({message_id for _, message_id in delivered}) == 4


def test_lead_payloads_have_distinct_phones_spread_over_the_services():
    payloads = testtools.lead_payloads([(1, "service-1"), (2, "service-2")], count=10)

    assert len({p["phone"] for p in payloads}) == 10
    assert [p["service"] for p in payloads] == ["service-1", "service-2"] * 5
