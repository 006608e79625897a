"""Who may reach what (SPEC §3, §4, §6, §7): every route against every kind of caller.

Public: /request-service, /healthz, the admin login page, static files and the webhook (its
signature is its credential). Everything else needs an API key or a staff session; the
staff pages and the event stream need a staff session.
"""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, Client
from django.urls import Resolver404, resolve
from django.utils import timezone

from allocation.models import Lead
from allocation.services import LeadInput, submit_lead
from credentials.models import ApiKey
from credentials.services import create_api_key
from webhooks.tests.helpers import SECRET, signed

PRINCIPALS = ["anonymous", "wrong_key", "revoked_key", "valid_key", "non_staff", "staff"]

LEAD_BODY = {"name": "Ada", "phone": "+1 555 010 0000", "city": "London", "service": 1}
WEBHOOK_BODY = {"eventId": "evt_matrix"}

# Expected status per principal, in PRINCIPALS order.
STAFF_PAGE = (302, 302, 302, 302, 403, 200)
PUBLIC = (200,) * 6


def api(ok):
    return (401, 401, 401, ok, 403, ok)


# (id, method, path, expected); {lead} is replaced by a stored lead's id.
ROUTES = [
    ("list leads", "get", "/api/leads", api(200)),
    ("submit lead", "post", "/api/leads", api(201)),
    ("submit lead alias", "post", "/api/request-service", api(201)),
    ("lead detail", "get", "/api/leads/{lead}", api(200)),
    ("providers", "get", "/api/providers", api(200)),
    ("services", "get", "/api/services", api(200)),
    ("openapi schema", "get", "/api/openapi.json", api(200)),
    # The docs page sends a browser without any credential to the login page.
    ("api docs", "get", "/api/docs", (302, 401, 401, 200, 403, 200)),
    ("unknown api route", "get", "/api/nothing-here", (404,) * 6),
    # The signature is the webhook's credential: keys and sessions change nothing.
    ("webhook unsigned", "post", "/api/webhook/reset-quota", (401,) * 6),
    ("webhook signed", "signed", "/api/webhook/reset-quota", (200,) * 6),
    ("dashboard", "get", "/dashboard", STAFF_PAGE),
    ("test tools", "get", "/test-tools", STAFF_PAGE),
    # Fetched by the dashboard's script, which must see a refusal as one, not a login page.
    ("dashboard fragments", "get", "/dashboard/fragments", (401, 401, 401, 401, 403, 200)),
    # The admin sends anyone but staff to its login page, which is public.
    ("admin", "get", "/admin/", (302, 302, 302, 302, 302, 200)),
    ("admin login", "get", "/admin/login/", (200, 200, 200, 200, 200, 302)),
    ("request form", "get", "/request-service", PUBLIC),
    ("request form post", "form", "/request-service", PUBLIC),
    ("healthz", "get", "/healthz", PUBLIC),
    # METRICS_TOKEN or a staff session: an API key is no metrics token.
    ("metrics", "get", "/metrics", (401, 401, 401, 401, 403, 200)),
]
# SPEC §6: staff sessions only, with real 401/403 answers; an API key is no session. Tested
# on committed data: the stream reads the session in a worker thread, on its own connection.
STREAM = ("event stream", "stream", "/api/events", (401, 401, 401, 401, 403, 200))


@pytest.fixture
def lead(seeded):
    return submit_lead(
        LeadInput(service_id=2, name="Grace", phone="+15550109999", city="Arlington")
    )


@pytest.fixture
def caller(db, django_user_model, settings):
    """(client, headers) for a principal; the webhook is signed with SECRET when it must be."""
    settings.WEBHOOK_SECRET = SECRET

    def make(principal: str, *, async_client: bool = False):
        client = AsyncClient() if async_client else Client()
        headers = {}
        if principal == "wrong_key":
            headers["Authorization"] = "Bearer ld_not-a-real-key"
        elif principal in ("revoked_key", "valid_key"):
            key, raw = create_api_key(name=principal)
            if principal == "revoked_key":
                ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
            headers["Authorization"] = f"Bearer {raw}"
        elif principal in ("non_staff", "staff"):
            user = django_user_model.objects.create_user(
                username=principal, password="pw", is_staff=principal == "staff"
            )
            if async_client:
                async_to_sync(client.aforce_login)(user)
            else:
                client.force_login(user)
        return client, headers

    return make


def _stream_status(client: AsyncClient, path: str, headers: dict) -> int:
    async def fetch() -> int:
        response = await client.get(path, headers=headers)
        if response.streaming:
            await aiter(response.streaming_content).aclose()
        return response.status_code

    return async_to_sync(fetch)()


def call(caller, principal: str, method: str, path: str) -> int:
    if method == "stream":
        client, headers = caller(principal, async_client=True)
        return _stream_status(client, path, headers)
    client, headers = caller(principal)
    if method == "get":
        return client.get(path, headers=headers).status_code
    if method == "form":
        data = {**LEAD_BODY, "phone": "+1 555 010 0001"}
        return client.post(path, data, headers=headers).status_code
    if method == "signed":
        body = json.dumps(WEBHOOK_BODY).encode()
        headers = headers | signed(body, SECRET)
    else:
        body = json.dumps(WEBHOOK_BODY if "webhook" in path else LEAD_BODY).encode()
    return client.post(path, body, content_type="application/json", headers=headers).status_code


def route_exists(path: str) -> bool:
    try:
        resolve(path)
    except Resolver404:
        return False
    return True


@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [pytest.param(m, p, e, id=name) for name, m, p, e in ROUTES]
    + [pytest.param(*STREAM[1:], id=STREAM[0], marks=pytest.mark.django_db(transaction=True))],
)
def test_permission_matrix(caller, lead, principal, method, path, expected):
    # A security test never skips: a route that disappeared fails here rather than going
    # unchecked.
    if not path.startswith("/api/nothing"):
        assert route_exists(path.format(lead=lead.pk)), f"{path} is not routed"
    before = Lead.objects.count()

    status = call(caller, principal, method, path.format(lead=lead.pk))

    assert status == expected[PRINCIPALS.index(principal)]
    if status in (401, 403):
        assert Lead.objects.count() == before


@pytest.mark.parametrize("principal", ["anonymous", "wrong_key", "non_staff"])
@pytest.mark.parametrize("path", ["/api/leads", "/api/providers", "/api/openapi.json"])
def test_refusals_use_the_error_shape(caller, seeded, principal, path):
    client, headers = caller(principal)

    response = client.get(path, headers=headers)

    code = "forbidden" if principal == "non_staff" else "unauthorized"
    assert response.json()["error"]["code"] == code


def test_docs_send_an_anonymous_browser_to_the_login_page(client, seeded):
    response = client.get("/api/docs")

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=/api/docs")


def test_openapi_security_scheme_is_bearer_and_the_webhook_opts_out(admin_client, seeded):
    schema = admin_client.get("/api/openapi.json").json()

    assert schema["components"]["securitySchemes"]["ApiKeyOrStaffSession"]["scheme"] == "bearer"
    operations = [
        (path, method, op) for path, item in schema["paths"].items() for method, op in item.items()
    ]
    unsecured = [(path, method) for path, method, op in operations if not op.get("security")]
    assert unsecured == [("/api/webhook/reset-quota", "post")]


def test_static_files_are_public(settings, db):
    settings.WHITENOISE_USE_FINDERS = True
    client = Client()  # built after the setting: WhiteNoise reads it when it starts

    responses = [
        client.get(path)
        for path in ("/static/css/leaddist.css", "/static/ninja/swagger-ui-bundle.js")
    ]

    assert [r.status_code for r in responses] == [200, 200]
