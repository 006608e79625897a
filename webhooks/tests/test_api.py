"""POST /api/webhook/reset-quota: responses, validation and effects (unsigned, as in DEBUG)."""

from __future__ import annotations

import json
import logging

import pytest

from allocation.engine import Candidate, choose_providers
from allocation.models import Allocation, Lead
from providers.models import PoolCursor, Provider
from webhooks.models import ProcessedEvent
from webhooks.services import canonical_body_sha256
from webhooks.tests.helpers import URL, assert_invariants, payload, post, snapshot, submit_leads

pytestmark = pytest.mark.django_db


def test_first_delivery_resets_every_provider_and_answers_applied(client, seeded):
    submit_leads(1, 3)
    used = dict(Provider.objects.values_list("pk", "remaining_quota"))

    response = post(client, payload("reset_all.json"))

    assert response.status_code == 200
    assert response.json() == {
        "status": "applied",
        "eventId": "evt_2024_11_reset_all",
        "leadsAllocated": 0,
        "leadsWaiting": 0,
    }
    assert used[1] == 7
    for provider in Provider.objects.all():
        assert provider.remaining_quota == provider.quota
        assert provider.cycle == 2
        assert provider.leads_this_cycle == 0
    assert Provider.objects.get(pk=1).leads_total == 3
    event = ProcessedEvent.objects.get()
    assert event.event_id == "evt_2024_11_reset_all"
    assert event.body_sha256 == canonical_body_sha256({"eventId": "evt_2024_11_reset_all"})
    assert event.provider_ids is None
    assert event.providers_reset == 8
    assert event.leads_allocated == 0
    assert_invariants()


def test_reset_keeps_cursors_and_lead_history(client, seeded):
    submit_leads(1, 2)
    cursors = list(PoolCursor.objects.order_by("pk").values_list("service_id", "position"))
    allocations = list(Allocation.objects.values_list("lead_id", "provider_id", "rank", "cycle"))

    post(client, payload("reset_all.json"))

    assert list(PoolCursor.objects.order_by("pk").values_list("service_id", "position")) == (
        cursors
    )
    assert list(Allocation.objects.values_list("lead_id", "provider_id", "rank", "cycle")) == (
        allocations
    )
    assert Lead.objects.allocated().count() == 2


def test_repeated_delivery_answers_duplicate_and_changes_nothing(client, seeded):
    post(client, payload("reset_all.json"))
    submit_leads(1, 1)
    before = snapshot()

    response = post(client, payload("reset_all.json"))

    assert response.status_code == 200
    assert response.json() == {"status": "duplicate", "eventId": "evt_2024_11_reset_all"}
    assert snapshot() == before
    assert Provider.objects.get(pk=1).cycle == 2
    assert ProcessedEvent.objects.count() == 1


def test_same_body_with_reordered_keys_and_repeated_ids_is_a_duplicate(client, seeded):
    first = post(client, payload("reset_some.json"))

    second = post(client, payload("reset_some_reordered.json"))

    assert first.json()["status"] == "applied"
    assert second.status_code == 200
    assert second.json()["status"] == "duplicate"
    assert Provider.objects.get(pk=1).cycle == 2


def test_partial_reset_touches_only_the_listed_providers(client, seeded):
    submit_leads(3, 2)  # uses P1, P4 (mandatory) and P2, P3
    before = dict(Provider.objects.values_list("pk", "remaining_quota"))

    response = post(client, payload("reset_some.json"))

    assert response.status_code == 200
    after = {p.pk: (p.remaining_quota, p.cycle) for p in Provider.objects.all()}
    assert after[1] == (10, 2)
    assert after[4] == (10, 2)
    assert before[2] == before[3] == 9
    assert after[2] == (9, 1)
    assert after[3] == (9, 1)
    event = ProcessedEvent.objects.get()
    assert event.provider_ids == [1, 4]
    assert event.providers_reset == 2
    assert_invariants()


def test_same_event_id_with_another_body_is_an_idempotency_conflict(client, seeded):
    post(client, payload("reset_some.json"))
    submit_leads(1, 1)
    before = snapshot()

    response = post(client, payload("reset_some_other_body.json"))

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "idempotency_conflict"
    assert response.json()["error"]["eventId"] == "evt_2024_11_reset_some"
    assert snapshot() == before


def test_unknown_provider_is_rejected_with_no_effect_and_the_id_stays_unused(client, seeded):
    submit_leads(1, 1)
    before = snapshot()

    response = post(client, payload("unknown_provider.json"))

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert "999" in error["fields"]["providerIds"][0]
    assert snapshot() == before
    assert not ProcessedEvent.objects.exists()
    retry = post(client, {"eventId": "evt_2024_11_unknown_provider", "providerIds": [1]})
    assert retry.json()["status"] == "applied"


def test_provider_id_beyond_bigint_is_unknown_not_a_server_error(client, seeded):
    response = post(client, {"eventId": "evt_big", "providerIds": [2**70, 1]})

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"
    assert not ProcessedEvent.objects.exists()


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"not json", b'{"eventId": "a",}', b'{"eventId": NaN}', b"[" * 60000],
    ids=["empty", "truncated", "text", "trailing-comma", "nan", "nested-too-deep"],
)
def test_unparseable_json_is_400_malformed_json(client, seeded, body):
    response = post(client, body)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_json"
    assert not ProcessedEvent.objects.exists()


def test_non_utf8_body_without_a_secret_is_400_not_500(client, seeded):
    response = post(client, b'{"eventId": "\xff\xfe"}')

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_json"


@pytest.mark.parametrize(
    "body",
    [{}, {"eventId": ""}, {"eventId": "x" * 256}, {"providerIds": [1]}],
    ids=["missing", "empty", "256-chars", "ids-only"],
)
def test_missing_or_badly_sized_event_id_is_422(client, seeded, body):
    response = post(client, body)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert list(error["fields"]) == ["eventId"]
    assert not ProcessedEvent.objects.exists()


def test_event_id_of_255_characters_is_accepted(client, seeded):
    response = post(client, {"eventId": "x" * 255})

    assert response.status_code == 200
    assert response.json()["status"] == "applied"
    assert ProcessedEvent.objects.get().event_id == "x" * 255


@pytest.mark.parametrize("event_id", [123, None, ["a"], {"id": "a"}, True])
def test_non_string_event_id_is_422(client, seeded, event_id):
    response = post(client, {"eventId": event_id})

    assert response.status_code == 422
    assert "eventId" in response.json()["error"]["fields"]


@pytest.mark.parametrize("raw", [b'"a\\u0000b"', b'"\\ud800"'], ids=["nul", "lone-surrogate"])
def test_event_id_that_postgres_cannot_store_is_422_not_500(client, seeded, raw):
    response = post(client, b'{"eventId": ' + raw + b"}")

    assert response.status_code == 422
    assert "eventId" in response.json()["error"]["fields"]


@pytest.mark.parametrize(
    "provider_ids",
    [[], "1", 1, None, {"1": 1}, [1, "2"], [1.5], [1.0], [True], [1, False], [[1]]],
    ids=[
        "empty",
        "string",
        "int",
        "null",
        "object",
        "string-item",
        "float",
        "integral-float",
        "true",
        "false",
        "nested",
    ],
)
def test_invalid_provider_ids_are_422_with_no_effect(client, seeded, provider_ids):
    before = snapshot()

    response = post(client, {"eventId": "evt_bad_ids", "providerIds": provider_ids})

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert list(error["fields"]) == ["providerIds"]
    assert snapshot() == before
    assert not ProcessedEvent.objects.exists()


@pytest.mark.parametrize("body", [[], ["evt"], "evt", 1, None], ids=str)
def test_json_that_is_not_an_object_is_422(client, seeded, body):
    response = post(client, json.dumps(body).encode())

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


def test_body_over_64_kib_is_413(client, seeded):
    body = json.dumps({"eventId": "evt_big", "padding": "x" * (64 * 1024)}).encode()

    response = post(client, body)

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert not ProcessedEvent.objects.exists()


def test_body_of_exactly_64_kib_is_accepted(client, seeded):
    head = b'{"eventId": "evt_64k", "padding": "'
    body = head + b"x" * (64 * 1024 - len(head) - 2) + b'"}'

    response = post(client, body)

    assert len(body) == 64 * 1024
    assert response.status_code == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_body_that_is_not_declared_json_is_415(client, seeded, content_type):
    response = post(client, payload("reset_all.json"), content_type=content_type)

    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert not ProcessedEvent.objects.exists()


def test_json_content_type_with_charset_is_accepted(client, seeded):
    response = post(
        client, payload("reset_all.json"), content_type="application/json; charset=utf-8"
    )

    assert response.status_code == 200


def test_route_has_no_trailing_slash_variant_and_only_takes_post(client, seeded):
    slash = post(client, payload("reset_all.json"), path=URL + "/")
    get = client.get(URL)

    assert slash.status_code == 404
    assert slash.json()["error"]["code"] == "not_found"
    assert get.status_code == 405
    assert get.json()["error"]["code"] == "method_not_allowed"
    assert not ProcessedEvent.objects.exists()


def test_unsigned_calls_without_a_secret_log_one_warning_per_process(
    client, seeded, caplog, fresh_unsigned_warning
):
    with caplog.at_level(logging.WARNING, logger="webhooks.api"):
        post(client, {"eventId": "evt_a"})
        post(client, {"eventId": "evt_b"})

    warnings = [r for r in caplog.records if "WEBHOOK_SECRET is not set" in r.getMessage()]
    assert len(warnings) == 1


def test_reset_drains_waiting_leads_oldest_first_by_the_normal_rule(client, seeded):
    # Service 1 holds 40 quota (P1..P4): 13 leads of 3 fit, the other 17 wait.
    leads = submit_leads(1, 30)
    waiting = [lead.pk for lead in leads if lead.status == Lead.Status.WAITING]
    cursor = seeded.cursor(1)
    # What the rule gives the oldest waiting lead once every quota is back.
    expected = choose_providers(
        [Candidate(1, 1)], [Candidate(2, 1), Candidate(3, 2), Candidate(4, 3)], cursor=cursor
    ).provider_ids

    response = post(client, payload("reset_all.json"))

    assert len(waiting) == 17
    assert response.status_code == 200
    assert response.json()["leadsAllocated"] == 13
    assert ProcessedEvent.objects.get().leads_allocated == 13
    drained = list(Lead.objects.filter(pk__in=waiting).allocated().order_by("pk"))
    assert [lead.pk for lead in drained] == waiting[:13]
    assert (
        list(Lead.objects.waiting().order_by("pk").values_list("pk", flat=True)) == (waiting[13:])
    )
    first = list(drained[0].allocations.order_by("rank").values_list("provider_id", flat=True))
    assert first == expected
    assert [d.allocated_at for d in drained] == sorted(d.allocated_at for d in drained)
    assert all(a.cycle == 2 for a in Allocation.objects.filter(lead__in=drained))
    assert_invariants()


def test_openapi_documents_the_body_and_every_answer(admin_client, seeded):
    schema = admin_client.get("/api/openapi.json").json()

    operation = schema["paths"][URL]["post"]

    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"eventId", "providerIds"}
    assert body["required"] == ["eventId"]
    assert {"200", "400", "401", "413", "415", "422", "503"} <= set(
        map(str, operation["responses"])
    )
    headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
    assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert "security" not in operation
