"""Every portal route and action, tried with another provider's ids, answers 404; provider
accounts reach none of the staff's pages, APIs or docs (SPEC §9)."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import URLPattern

from allocation.models import Lead
from portal import urls as portal_urls
from providers.models import Provider
from returns.models import Return
from returns.tests.support import allocated_lead

pytestmark = pytest.mark.django_db(transaction=True)  # the stream reads in a worker thread

# Every portal route that takes an id, with how it is used. A new route with an id must be
# added here (the first test fails otherwise), so it cannot escape the walk.
ID_ROUTES = {
    "api_lead": [("get", {})],
    "api_return": [("post_json", {"reason": "spam"})],
    "lead_row": [("get", {})],
    "return_lead": [("post", {"reason": "spam", "note": ""})],
}


def id_routes() -> dict[str, str]:
    return {
        pattern.name: str(pattern.pattern)
        for pattern in portal_urls.urlpatterns
        if isinstance(pattern, URLPattern) and "<int:" in str(pattern.pattern)
    }


def test_the_walk_covers_every_route_with_an_id():
    assert set(id_routes()) == set(ID_ROUTES)


def call(client: Client, how: str, path: str, data: dict):
    if how == "get":
        return client.get(path)
    if how == "post":
        return client.post(path, data)
    return client.post(path, data, content_type="application/json")


def test_another_providers_leads_and_unknown_ids_are_404_everywhere(provider_client, seeded_tx):
    # Service 1's third lead goes to P1, P3, P4: not to provider 2.
    allocated_lead(), allocated_lead()
    others = allocated_lead()
    assert not others.allocations.filter(provider_id=2).exists()
    Provider.objects.filter(pk__in=[1, 3, 4]).update(remaining_quota=0)
    waiting = allocated_lead()
    assert waiting.status == Lead.Status.WAITING
    ids = [others.pk, waiting.pk, 999_999_999, 2**63, 2**70]

    for name, uses in ID_ROUTES.items():
        template = "/" + id_routes()[name].replace("<int:lead_id>", "{}")
        for how, data in uses:
            for lead_id in ids:
                response = call(provider_client, how, template.format(lead_id), data)
                assert response.status_code == 404, (name, lead_id, response.status_code)
                if template.startswith("/portal/api/"):
                    assert response.json()["error"]["code"] == "not_found"

    assert not Return.objects.exists()


STAFF_ONLY = [
    "/admin/",
    "/admin/providers/provider/",
    "/dashboard",
    "/dashboard/fragments",
    "/test-tools",
    "/api/leads",
    "/api/providers",
    "/api/docs",
    "/api/openapi.json",
    "/api/events",
    "/metrics",
]


@pytest.mark.parametrize("path", STAFF_ONLY)
def test_a_provider_session_reaches_no_staff_page_api_or_docs(provider_client, path):
    response = provider_client.get(path)

    if path.startswith("/admin/"):
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/")
    else:
        assert response.status_code in (401, 403), response.status_code


def test_a_provider_session_cannot_write_through_the_api(provider_client):
    response = provider_client.post(
        "/api/leads",
        {"name": "A", "phone": "+15550001111", "city": "Oslo", "service": 1},
        content_type="application/json",
    )

    assert response.status_code == 403


def test_anonymous_visitors_are_sent_to_the_portal_sign_in_or_get_401(seeded_tx):
    client = Client()

    assert client.get("/portal/")["Location"] == "/portal/login/?next=/portal/"
    assert client.get("/portal/api/leads").status_code == 401
    # What the page's script fetches answers 401, never the sign-in page's 200.
    assert client.get("/portal/summary").status_code == 401
    assert client.get("/portal/leads/1/row").status_code == 401
    assert client.get("/portal/api/events").status_code == 401
    assert client.post("/portal/api/leads/1/return", {}).status_code == 401


def test_staff_and_plain_sessions_get_403_from_the_portal_api(staff_client, plain_client):
    for client in (staff_client, plain_client):
        response = client.get("/portal/api/leads")
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"


def test_unknown_portal_api_routes_are_404_in_the_error_shape(provider_client):
    response = provider_client.get("/portal/api/nothing/here")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_writes_need_their_csrf_token(provider_account, seeded_tx):
    lead = allocated_lead()
    client = Client(enforce_csrf_checks=True)
    client.force_login(provider_account.user)

    api = client.post(
        f"/portal/api/leads/{lead.pk}/return", {"reason": "spam"}, content_type="application/json"
    )
    page = client.post(f"/portal/leads/{lead.pk}/return", {"reason": "spam"})
    pause = client.post("/portal/pause")
    api_pause = client.post("/portal/api/pause")
    api_endpoint = client.put(
        "/portal/api/endpoint", {"email": "x@y.test"}, content_type="application/json"
    )
    routing_page = client.post("/portal/routing", {"daily_cap_value": "1"})
    api_routing = client.put(
        "/portal/api/routing", {"daily_cap": 1}, content_type="application/json"
    )

    assert api.status_code == 403
    assert api.json()["error"]["code"] == "forbidden"
    assert page.status_code == 403
    assert pause.status_code == 403
    assert api_pause.status_code == 403
    assert api_endpoint.status_code == 403
    assert routing_page.status_code == 403
    assert api_routing.status_code == 403
    assert api_routing.json()["error"]["code"] == "forbidden"
    assert Provider.objects.get(pk=2).daily_cap is None
    assert not Return.objects.exists()
    assert Provider.objects.get(pk=2).status == "active"
