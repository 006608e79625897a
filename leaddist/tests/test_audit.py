"""One structured log line per lead and per webhook delivery, with no phone number in it."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging

import pytest

from credentials.services import create_api_key
from intake.tests.support import LEAD, post_lead
from leaddist.http.audit import keyed_hash
from webhooks.tests.helpers import SECRET, signed

DIGITS = "5550100000"  # LEAD's phone without its country code and punctuation


@pytest.fixture
def api_key(db):
    return create_api_key(name="acme")[1]


@pytest.fixture
def audit(caplog):
    caplog.set_level(logging.INFO, logger="leaddist.audit")

    def lines(event):
        return [
            json.loads(record.getMessage())
            for record in caplog.records
            if record.name == "leaddist.audit" and json.loads(record.getMessage())["event"] == event
        ]

    return lines


def assert_no_phone(caplog):
    for text in (caplog.text, *(r.getMessage() for r in caplog.records)):
        assert DIGITS not in text
        assert "555 010 0000" not in text


def test_allocated_api_lead_logs_who_what_outcome_and_duration(
    client, seeded, api_key, audit, caplog
):
    response = post_lead(client, key=api_key)

    [line] = audit("lead")
    assert line == {
        "event": "lead",
        "via": "api",
        "who": "key:acme",
        "client_hash": keyed_hash("127.0.0.1"),
        "status": 201,
        "service_id": 1,
        "phone_hash": keyed_hash("+15550100000"),
        "outcome": "allocated",
        "lead_id": response.json()["id"],
        "duration_ms": line["duration_ms"],
    }
    assert isinstance(line["duration_ms"], float)
    assert line["duration_ms"] >= 0
    assert_no_phone(caplog)


def test_staff_session_lead_names_the_user(admin_client, seeded, audit, caplog):
    post_lead(admin_client)

    [line] = audit("lead")
    assert (line["who"], line["status"]) == ("staff:admin", 201)
    assert_no_phone(caplog)


def test_form_lead_logs_the_form_as_its_source(client, seeded, audit, caplog):
    client.post("/request-service", {**LEAD, "service": "1"})

    [line] = audit("lead")
    assert (line["via"], line["who"], line["status"], line["outcome"]) == (
        "form",
        "form",
        200,
        "allocated",
    )
    assert line["phone_hash"] == keyed_hash("+15550100000")
    assert_no_phone(caplog)


@pytest.mark.parametrize(
    ("body", "status", "outcome"),
    [
        ({**LEAD, "city": ""}, 422, "invalid_request"),
        ({**LEAD, "phone": f"+1 {DIGITS}0000000"}, 422, "invalid_request"),
        ("{", 400, "malformed_json"),
    ],
)
def test_rejected_lead_is_logged_without_its_phone(
    client, seeded, api_key, audit, caplog, body, status, outcome
):
    post_lead(client, body, key=api_key)

    [line] = audit("lead")
    assert (line["status"], line["outcome"]) == (status, outcome)
    assert "phone_hash" not in line  # only a validated phone is hashed
    assert_no_phone(caplog)


def test_duplicate_and_rate_limited_leads_are_logged(
    client, seeded, api_key, audit, caplog, settings
):
    settings.RATE_LIMIT_PER_KEY = "2/m"
    first = post_lead(client, key=api_key)
    post_lead(client, key=api_key)
    post_lead(client, key=api_key)

    outcomes = [(line["status"], line["outcome"], line.get("lead_id")) for line in audit("lead")]
    assert outcomes == [
        (201, "allocated", first.json()["id"]),
        (409, "duplicate_lead", first.json()["id"]),
        (429, "rate_limited", None),
    ]
    assert_no_phone(caplog)


def test_phone_hash_is_keyed_so_a_plain_hash_does_not_match(settings):
    settings.PHONE_HASH_KEY = "k1"
    first = keyed_hash("+15550100000")
    settings.PHONE_HASH_KEY = "k2"
    second = keyed_hash("+15550100000")

    expected = hmac.new(b"k2", b"+15550100000", hashlib.sha256).hexdigest()[:16]
    assert second == expected
    assert first != second
    assert second != hashlib.sha256(b"+15550100000").hexdigest()[:16]


def test_phone_hash_key_defaults_to_one_derived_from_the_secret_key(settings):
    settings.PHONE_HASH_KEY = ""
    settings.SECRET_KEY = "one"
    first = keyed_hash("+15550100000")
    settings.SECRET_KEY = "two"

    assert keyed_hash("+15550100000") != first


# --- Webhook --------------------------------------------------------------------------------------


def post_webhook(client, data, headers=None):
    body = json.dumps(data).encode()
    return client.post(
        "/api/webhook/reset-quota", body, content_type="application/json", headers=headers or {}
    )


def test_webhook_deliveries_log_the_gateway_event_and_outcome(client, seeded, settings, audit):
    settings.WEBHOOK_SECRET = SECRET
    body = json.dumps({"eventId": "evt_log"}).encode()

    post_webhook(client, {"eventId": "evt_log"}, signed(body, SECRET, msg_id="msg_9"))
    post_webhook(client, {"eventId": "evt_log"}, signed(body, SECRET, msg_id="msg_10"))
    post_webhook(client, {"eventId": "evt_log"})

    lines = audit("webhook")
    assert [
        (line["who"], line.get("event_id"), line["status"], line["outcome"]) for line in lines
    ] == [
        ("gateway", "evt_log", 200, "applied"),
        ("gateway", "evt_log", 200, "duplicate"),
        ("gateway", None, 401, "unauthorized"),
    ]
    assert [line.get("webhook_id") for line in lines] == ["msg_9", "msg_10", None]
    assert lines[0]["leads_allocated"] == 0
    assert all(line["duration_ms"] >= 0 for line in lines)


def test_webhook_conflict_is_logged_with_its_event_id(client, seeded, settings, audit):
    settings.WEBHOOK_SECRET = ""
    post_webhook(client, {"eventId": "evt_c"})

    post_webhook(client, {"eventId": "evt_c", "providerIds": [1]})

    assert [(line["status"], line["outcome"], line["event_id"]) for line in audit("webhook")] == [
        (200, "applied", "evt_c"),
        (422, "idempotency_conflict", "evt_c"),
    ]
