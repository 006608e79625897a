"""Hostile input on intake and the webhook: the documented status, never a 500, no partial row.

intake/tests/test_api_intake.py and webhooks/tests/ already cover most single cases
(media types, malformed and non-UTF-8 JSON, 64 KiB, nesting, surrogates, NUL in the text
fields); this file covers every field systematically and what must come back intact.
"""

from __future__ import annotations

import json

import pytest
from django.urls import Resolver404, resolve

from allocation.models import Lead
from credentials.services import create_api_key
from events.tests.support import settle_events
from intake.tests.support import LEAD, post_lead, stored_state
from providers.models import Service
from webhooks.models import ProcessedEvent
from webhooks.tests.helpers import SECRET, snapshot

WRONG_TYPES = [None, 0, 1.5, True, False, [], {}, ["x"], {"a": "b"}]
FIELDS = ["name", "phone", "city", "service", "description"]


@pytest.fixture
def api_key(db):
    return create_api_key(name="acme")[1]


@pytest.fixture
def headers(api_key):
    return {"Authorization": f"Bearer {api_key}"}


def read_back(client, headers, lead_id):
    response = client.get(f"/api/leads/{lead_id}", headers=headers)
    assert response.status_code == 200
    return response.json()


# --- Intake: every field, every wrong type -------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param(field, value, id=f"{field}={value!r}")
        for field in FIELDS
        for value in WRONG_TYPES
        # A null description is an empty one (SPEC §3: optional).
        if (field, value) != ("description", None)
    ],
)
def test_null_or_wrong_type_in_any_field_is_422_and_stores_nothing(
    client, seeded, api_key, field, value
):
    before = stored_state()

    response = post_lead(client, {**LEAD, field: value}, key=api_key)

    assert response.status_code == 422
    assert list(response.json()["error"]["fields"]) == [field]
    assert stored_state() == before


@pytest.mark.parametrize("field", ["phone", "service"])
@pytest.mark.parametrize("text", ["\x00", "555\x000100000", "service-1\x00"])
def test_nul_characters_in_phone_or_service_are_422(client, seeded, api_key, field, text):
    before = stored_state()

    response = post_lead(client, {**LEAD, field: text}, key=api_key)

    assert response.status_code == 422
    assert list(response.json()["error"]["fields"]) == [field]
    assert stored_state() == before


def test_every_field_wrong_at_once_is_one_422_naming_each(client, seeded, api_key):
    body = {field: [None] for field in FIELDS}

    response = post_lead(client, body, key=api_key)

    assert response.status_code == 422
    assert set(response.json()["error"]["fields"]) == set(FIELDS)
    assert Lead.objects.count() == 0


def test_unknown_extra_fields_cannot_set_internal_columns(client, seeded, api_key, headers):
    body = {**LEAD, "status": "waiting", "source": "forged", "trace": [], "id": 999}

    response = post_lead(client, body, key=api_key)

    lead = Lead.objects.get()
    assert response.status_code == 201
    assert (lead.status, lead.source, lead.pk != 999) == ("allocated", "acme", True)


# --- Intake: text comes back exactly as sent -----------------------------------------------------

UNICODE_NAMES = [
    "Zoë Ångström-Łukasiewicz",
    "李小龍",
    "عبد الله",
    "Ada \U0001f469\u200d\U0001f52c Lovelace",  # emoji with a zero-width joiner
    "Rene\u0301e",  # decomposed: must not be normalised to "Renée"
    "\u202eevil\u202c",  # bidi override, stored as sent
    "x" * 119 + "\U0001f600",  # 120 characters, the last one outside the BMP
]


@pytest.mark.parametrize("name", UNICODE_NAMES)
def test_unicode_names_are_stored_and_returned_intact(client, seeded, api_key, headers, name):
    response = post_lead(client, {**LEAD, "name": name, "city": name}, key=api_key)

    assert response.status_code == 201
    lead = Lead.objects.get()
    assert (lead.name, lead.city) == (name, name)
    assert read_back(client, headers, lead.pk)["name"] == name


SQL_LOOKING = [
    "Robert'); DROP TABLE allocation_lead;--",
    "' OR '1'='1",
    '"; SELECT pg_sleep(10); --',
    "1 UNION SELECT key_hash FROM allocation_apikey",
    "%' AND 1=1 AND '%'='",
]


@pytest.mark.parametrize("text", SQL_LOOKING)
def test_sql_looking_strings_are_stored_verbatim(client, seeded, api_key, headers, text):
    response = post_lead(
        client, {**LEAD, "name": text, "city": text, "description": text}, key=api_key
    )

    assert response.status_code == 201
    lead = Lead.objects.get()
    assert (lead.name, lead.city, lead.description) == (text, text, text)
    assert read_back(client, headers, lead.pk)["description"] == text
    assert Service.objects.count() == 3  # and every table is still there


@pytest.mark.parametrize("text", SQL_LOOKING)
def test_sql_looking_service_or_filter_is_an_unknown_service(client, seeded, api_key, text):
    submit = post_lead(client, {**LEAD, "service": text}, key=api_key)
    listed = client.get(
        "/api/leads", {"service": text}, headers={"Authorization": f"Bearer {api_key}"}
    )

    assert (submit.status_code, listed.status_code) == (422, 422)
    assert Lead.objects.count() == 0


HTML = '<script>alert(1)</script><img src=x onerror="alert(2)">&amp;'


def test_html_in_a_description_is_returned_verbatim_by_the_api(client, seeded, api_key, headers):
    post_lead(client, {**LEAD, "name": "<b>Ada</b>", "description": HTML}, key=api_key)

    lead = Lead.objects.get()
    detail = read_back(client, headers, lead.pk)
    listed = client.get("/api/leads", headers=headers).json()["items"][0]

    assert (detail["name"], detail["description"]) == ("<b>Ada</b>", HTML)
    assert listed["description"] == HTML


def test_html_in_a_lead_is_escaped_on_the_dashboard(
    admin_client, seeded, api_key, django_capture_on_commit_callbacks
):
    try:
        resolve("/dashboard")
    except Resolver404:
        pytest.fail("/dashboard is not routed: a security test never skips it")
    with django_capture_on_commit_callbacks(execute=True):
        post_lead(admin_client, {**LEAD, "name": "<b>Ada</b>", "description": HTML})
    settle_events()

    html = admin_client.get("/dashboard").content.decode()

    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;Ada&lt;/b&gt;" in html
    assert "<script>alert(1)" not in html
    assert 'onerror="alert(2)"' not in html


# --- The public form ------------------------------------------------------------------------------


def test_form_with_non_utf8_bytes_is_a_field_error_not_a_500(client, seeded):
    body = b"name=%FF%FEAda&phone=5550100000&city=London&service=1"

    response = client.post(
        "/request-service", body, content_type="application/x-www-form-urlencoded"
    )

    # Django decodes form bytes with replacement characters; the name is then plain text.
    assert response.status_code in (200, 422)
    if response.status_code == 200:
        assert Lead.objects.get().name == "\ufffd\ufffdAda"


@pytest.mark.parametrize("name", UNICODE_NAMES[:3])
def test_form_stores_unicode_names_intact(client, seeded, name):
    response = client.post("/request-service", {**LEAD, "name": name, "service": "1"})

    assert response.status_code == 200
    assert Lead.objects.get().name == name


def test_form_output_escapes_what_was_typed(client, seeded):
    response = client.post("/request-service", {**LEAD, "name": HTML, "phone": "12"})

    html = response.content.decode()
    assert response.status_code == 422
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


# --- Credentials ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    ["Bearer " + "x" * 10_000, "Bearer \u00e9\u00e8", "Bearer ' OR 1=1 --", "Basic Zm9vOmJhcg=="],
)
def test_hostile_authorization_headers_are_401(client, seeded, authorization):
    response = client.get("/api/leads", headers={"Authorization": authorization})

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


# --- Webhook --------------------------------------------------------------------------------------


def post_webhook(client, body: bytes, headers=None):
    return client.post(
        "/api/webhook/reset-quota", body, content_type="application/json", headers=headers or {}
    )


@pytest.fixture
def unsigned(settings):
    settings.WEBHOOK_SECRET = ""


@pytest.mark.parametrize("depth", [10, 200, 900, 5_000, 100_000])
def test_deep_nesting_inside_a_webhook_field_is_never_a_500(client, seeded, unsigned, depth):
    before = snapshot()
    body = b'{"eventId": "evt_deep", "extra": ' + b"[" * depth + b"]" * depth + b"}"

    response = post_webhook(client, body)

    if len(body) > 64 * 1024:
        assert response.status_code == 413
    else:
        assert response.status_code in (200, 400)
    if response.status_code != 200:
        assert snapshot() == before
        assert not ProcessedEvent.objects.exists()


@pytest.mark.parametrize(
    "event_id",
    ["évènement-✓-事件", "evt\U0001f600", "'; DROP TABLE webhooks_processedevent; --", HTML],
)
def test_webhook_event_ids_are_stored_and_echoed_verbatim(client, seeded, unsigned, event_id):
    response = post_webhook(client, json.dumps({"eventId": event_id}).encode())

    assert response.status_code == 200
    assert response.json()["eventId"] == event_id
    assert ProcessedEvent.objects.get().event_id == event_id


@pytest.mark.parametrize("value", WRONG_TYPES, ids=repr)
def test_webhook_provider_ids_of_a_wrong_type_are_422(client, seeded, unsigned, value):
    before = snapshot()
    body = json.dumps({"eventId": "evt_types", "providerIds": value}).encode()

    response = post_webhook(client, body)

    assert response.status_code == 422
    assert list(response.json()["error"]["fields"]) == ["providerIds"]
    assert snapshot() == before
    assert not ProcessedEvent.objects.exists()


@pytest.mark.parametrize(
    "body",
    [b"\xff\xfe\x00{", b'{"eventId": "\xc3"}', "{}".encode("utf-16")],
    ids=["garbage", "truncated-utf8", "utf-16"],
)
def test_signed_webhook_refuses_bytes_that_are_not_utf8_without_a_500(
    client, seeded, settings, body
):
    settings.WEBHOOK_SECRET = SECRET
    headers = {"webhook-id": "m", "webhook-timestamp": "1", "webhook-signature": "v1,AAAA"}

    response = post_webhook(client, body, headers)

    assert response.status_code == 401
    assert not ProcessedEvent.objects.exists()
