"""Standard Webhooks signatures on the reset webhook, and the settings that require them."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings as django_settings

from providers.models import Provider
from webhooks.models import ProcessedEvent
from webhooks.signing import signature_headers
from webhooks.tests.helpers import payload, post, signed, snapshot

pytestmark = pytest.mark.django_db

OTHER_SECRET = "whsec_" + base64.b64encode(b"another-secret-not-the-gateways!").decode()


def assert_rejected(response, before):
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert snapshot() == before
    assert not ProcessedEvent.objects.exists()


def test_valid_signed_request_applies(client, seeded, webhook_secret):
    body = payload("reset_all.json")

    response = post(client, body, headers=signed(body, webhook_secret))

    assert response.status_code == 200
    assert response.json()["status"] == "applied"
    assert set(Provider.objects.values_list("cycle", flat=True)) == {2}


def test_signature_from_our_own_signer_is_accepted(client, seeded, webhook_secret):
    body = payload("reset_some.json")

    response = post(client, body, headers=signature_headers(body, secret=webhook_secret))

    assert response.status_code == 200


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_signature_header_is_401_with_no_effect(client, seeded, webhook_secret, missing):
    body = payload("reset_all.json")
    headers = signed(body, webhook_secret)
    del headers[missing]
    before = snapshot()

    response = post(client, body, headers=headers)

    assert_rejected(response, before)


def test_unsigned_request_is_401_when_a_secret_is_set(client, seeded, webhook_secret):
    before = snapshot()

    response = post(client, payload("reset_all.json"))

    assert_rejected(response, before)


def test_wrong_secret_is_401_with_no_effect(client, seeded, webhook_secret):
    body = payload("reset_all.json")
    before = snapshot()

    response = post(client, body, headers=signed(body, OTHER_SECRET))

    assert_rejected(response, before)


def test_tampered_body_is_401_with_no_effect(client, seeded, webhook_secret):
    body = payload("reset_some.json")
    headers = signed(body, webhook_secret)
    tampered = body.replace(b"[4, 1, 4]", b"[4, 1, 5]")
    before = snapshot()

    response = post(client, tampered, headers=headers)

    assert tampered != body
    assert_rejected(response, before)


@pytest.mark.parametrize("age", [timedelta(minutes=5, seconds=30), -timedelta(minutes=6)])
def test_timestamp_outside_five_minutes_is_401_with_no_effect(client, seeded, webhook_secret, age):
    body = payload("reset_all.json")
    headers = signed(body, webhook_secret, at=datetime.now(tz=UTC) - age)
    before = snapshot()

    response = post(client, body, headers=headers)

    assert_rejected(response, before)


def test_timestamp_four_minutes_old_is_accepted(client, seeded, webhook_secret):
    body = payload("reset_all.json")
    headers = signed(body, webhook_secret, at=datetime.now(tz=UTC) - timedelta(minutes=4))

    response = post(client, body, headers=headers)

    assert response.status_code == 200


def test_replayed_signature_on_a_different_body_is_401_with_no_effect(
    client, seeded, webhook_secret
):
    original = payload("reset_some.json")
    headers = signed(original, webhook_secret, msg_id="msg_replayed")
    assert post(client, original, headers=headers).json()["status"] == "applied"
    before = snapshot()
    events = ProcessedEvent.objects.count()

    response = post(client, payload("reset_all.json"), headers=headers)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert snapshot() == before
    assert ProcessedEvent.objects.count() == events


def test_replayed_request_with_the_same_body_is_only_a_duplicate(client, seeded, webhook_secret):
    body = payload("reset_all.json")
    headers = signed(body, webhook_secret)
    post(client, body, headers=headers)

    response = post(client, body, headers=headers)

    assert response.json()["status"] == "duplicate"
    assert set(Provider.objects.values_list("cycle", flat=True)) == {2}


def test_any_matching_signature_in_the_header_is_enough(client, seeded, webhook_secret):
    # Secret rotation: the gateway signs with the old and the new secret.
    body = payload("reset_all.json")
    headers = signed(body, webhook_secret)
    stale = signed(body, OTHER_SECRET)["webhook-signature"]
    headers["webhook-signature"] = f"{stale} {headers['webhook-signature']}"

    response = post(client, body, headers=headers)

    assert response.status_code == 200


@pytest.mark.parametrize(
    "signature",
    ["garbage", "v1", "v1,", "v1,!!!not-base64!!!", "v1,a,b", "v2,abc", "v1,é€", " ", "v1,YQ="],
)
def test_malformed_signature_header_is_401_not_500(client, seeded, webhook_secret, signature):
    body = payload("reset_all.json")
    headers = signed(body, webhook_secret)
    headers["webhook-signature"] = signature
    before = snapshot()

    response = post(client, body, headers=headers)

    assert_rejected(response, before)


@pytest.mark.parametrize("timestamp", ["soon", "", "nan", "inf", "1e400", "-1", "9" * 30])
def test_malformed_timestamp_header_is_401_not_500(client, seeded, webhook_secret, timestamp):
    body = payload("reset_all.json")
    headers = signed(body, webhook_secret)
    headers["webhook-timestamp"] = timestamp
    before = snapshot()

    response = post(client, body, headers=headers)

    assert_rejected(response, before)


def test_non_utf8_body_is_401_not_500(client, seeded, webhook_secret):
    body = b'{"eventId": "\xff\xfe"}'
    headers = signed(b'{"eventId": "x"}', webhook_secret)
    before = snapshot()

    response = post(client, body, headers=headers)

    assert_rejected(response, before)


def test_signature_is_checked_before_media_type_and_json(client, seeded, webhook_secret):
    response = post(client, b"{not json", content_type="text/plain")

    assert response.status_code == 401


def test_signed_but_unparseable_body_is_400(client, seeded, webhook_secret):
    body = b'{"eventId": '

    response = post(client, body, headers=signed(body, webhook_secret))

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_json"


def test_webhook_id_header_is_not_the_idempotency_key(client, seeded, webhook_secret):
    body = payload("reset_all.json")
    first = post(client, body, headers=signed(body, webhook_secret, msg_id="msg_a"))

    second = post(client, body, headers=signed(body, webhook_secret, msg_id="msg_b"))
    other_event = b'{"eventId": "evt_other"}'
    third = post(client, other_event, headers=signed(other_event, webhook_secret, msg_id="msg_a"))

    assert first.json()["status"] == "applied"
    assert second.json()["status"] == "duplicate"
    assert third.json()["status"] == "applied"
    assert set(Provider.objects.values_list("cycle", flat=True)) == {3}


def _start_django(**env: str) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "leaddist.settings",
        "SECRET_KEY": "test-secret-key",
        # Required with DEBUG off too; not what these tests are about.
        "DELIVERY_SECRET_KEYS": base64.urlsafe_b64encode(
            b"signature-test-delivery-key-32b!"
        ).decode(),
        "DATABASE_URL": os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1/x",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env=environment,
        cwd=django_settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_app_refuses_to_start_without_a_secret_when_debug_is_off():
    result = _start_django(DEBUG="false", WEBHOOK_SECRET="")

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "WEBHOOK_SECRET must be set when DEBUG is off" in result.stderr


def test_app_starts_without_a_secret_when_debug_is_on():
    result = _start_django(DEBUG="true", WEBHOOK_SECRET="")

    assert result.returncode == 0, result.stderr


def test_app_starts_with_a_secret_when_debug_is_off(webhook_secret):
    result = _start_django(DEBUG="false", WEBHOOK_SECRET=webhook_secret)

    assert result.returncode == 0, result.stderr


def test_app_refuses_a_secret_that_is_not_a_standard_webhooks_secret():
    result = _start_django(DEBUG="false", WEBHOOK_SECRET="whsec_")

    assert result.returncode != 0
    assert "not a valid Standard Webhooks secret" in result.stderr
