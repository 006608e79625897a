import json

import pytest
from django.core.serializers.json import DjangoJSONEncoder

from allocation.models import Lead
from credentials.services import create_api_key
from intake.tests.support import LEAD, cursor_locked, post_lead, stored_state
from providers.models import Provider, Service

PATHS = ["/api/leads", "/api/request-service"]


@pytest.fixture
def api_key(db):
    _, raw = create_api_key(name="acme")
    return raw


def expected_payload(lead_id, status, service_id, providers):
    """SPEC §3's body for a stored lead: providers given as (id, role) in selection order."""
    lead = Lead.objects.select_related("service").get(pk=lead_id)
    return {
        "id": lead.pk,
        "status": status,
        "service": {"id": service_id, "slug": f"service-{service_id}", "name": lead.service.name},
        "providers": [{"id": pk, "name": f"Provider {pk}", "role": role} for pk, role in providers],
        "created_at": DjangoJSONEncoder().default(lead.created_at),
    }


# --- Success -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_allocated_lead_answers_201_with_its_three_providers(client, seeded, api_key, path):
    response = post_lead(client, key=api_key, path=path)

    assert response.status_code == 201
    lead = Lead.objects.get()
    assert response.json() == expected_payload(
        lead.pk, "allocated", 1, [(1, "mandatory"), (2, "pool"), (3, "pool")]
    )
    assert (lead.phone, lead.source, lead.status) == ("+15550100000", "acme", "allocated")
    assert list(Provider.objects.filter(remaining_quota=9).values_list("pk", flat=True)) == [
        1,
        2,
        3,
    ]


@pytest.mark.parametrize("path", PATHS)
def test_providers_are_listed_in_selection_order_not_by_id(client, seeded, api_key, path):
    post_lead(client, {**LEAD, "phone": "5550100001"}, key=api_key, path=path)

    response = post_lead(client, {**LEAD, "phone": "5550100002"}, key=api_key, path=path)

    assert response.status_code == 201
    assert [(p["id"], p["role"]) for p in response.json()["providers"]] == [
        (1, "mandatory"),
        (4, "pool"),
        (2, "pool"),
    ]


def test_service_may_be_given_by_slug_or_digit_string(client, seeded, api_key):
    by_slug = post_lead(client, {**LEAD, "service": "service-3"}, key=api_key)
    by_digits = post_lead(client, {**LEAD, "phone": "5550100009", "service": "3"}, key=api_key)

    assert by_slug.status_code == by_digits.status_code == 201
    assert [p["id"] for p in by_slug.json()["providers"]] == [1, 4, 2]
    assert [p["id"] for p in by_digits.json()["providers"]] == [1, 4, 3]


@pytest.mark.parametrize("path", PATHS)
def test_lead_without_three_eligible_providers_answers_202_waiting(client, seeded, api_key, path):
    Provider.objects.filter(pk__in=[2, 3, 4]).update(remaining_quota=0)

    response = post_lead(client, key=api_key, path=path)

    assert response.status_code == 202
    lead = Lead.objects.get()
    assert response.json() == expected_payload(lead.pk, "waiting", 1, [])
    assert lead.status == "waiting"
    assert Provider.objects.get(pk=1).remaining_quota == 10


def test_unknown_fields_are_ignored_and_null_description_is_empty(client, seeded, api_key):
    response = post_lead(client, {**LEAD, "description": None, "utm": "x"}, key=api_key)

    assert response.status_code == 201
    assert Lead.objects.get().description == ""


def test_charset_parameter_of_the_media_type_is_accepted(client, seeded, api_key):
    response = post_lead(client, key=api_key, content_type="application/json; charset=utf-8")

    assert response.status_code == 201


# --- Routes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/leads/", "/api/request-service/", "/api/leads//"])
def test_slash_variants_answer_404_in_the_error_shape(client, seeded, api_key, path):
    response = post_lead(client, key=api_key, path=path)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert Lead.objects.count() == 0


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_other_methods_answer_405_in_the_error_shape(client, seeded, api_key, method):
    response = getattr(client, method)(
        "/api/leads", data="{}", headers={"Authorization": f"Bearer {api_key}"}
    )

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_openapi_schema_documents_the_body_and_every_status(client, seeded, api_key):
    schema = client.get("/api/openapi.json", headers={"Authorization": f"Bearer {api_key}"}).json()

    for path in PATHS:
        operation = schema["paths"][path]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body["required"] == ["name", "phone", "city", "service"]
        assert set(operation["responses"]) == {
            "201", "202", "400", "401", "403", "409", "413", "415", "422", "429", "503"
        }  # fmt: skip


# --- Bad input: documented status, nothing stored ---------------------------------------------


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("", "empty"),
        ("   \n", "blank"),
        ('{"name": "Ada",', "truncated"),
        ("{'name': 'Ada'}", "single quotes"),
        (b'{"name": "\xff\xfe", "phone": "5550100000", "city": "X", "service": 1}', "not UTF-8"),
        ('{"name": NaN}', "NaN is not JSON"),
        ("[" * 30000 + "]" * 30000, "nested too deeply"),
        ('{"name": ' + "[" * 30000 + "]" * 30000 + "}", "nested too deeply inside"),
    ],
)
def test_unparseable_body_is_400_malformed_json(client, seeded, api_key, body, why):
    before = stored_state()

    response = post_lead(client, body, key=api_key)

    assert response.status_code == 400, why
    assert response.json()["error"]["code"] == "malformed_json"
    assert stored_state() == before


@pytest.mark.parametrize("body", ["[]", "null", '"lead"', "42", json.dumps([LEAD])])
def test_json_that_is_not_an_object_is_422(client, seeded, api_key, body):
    before = stored_state()

    response = post_lead(client, body, key=api_key)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"
    assert "request" in response.json()["error"]["fields"]
    assert stored_state() == before


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": 42}, "name"),
        ({"name": ["Ada"]}, "name"),
        ({"name": None}, "name"),
        ({"name": {"first": "Ada"}}, "name"),
        ({"phone": 5550100000}, "phone"),
        ({"city": True}, "city"),
        ({"service": True}, "service"),
        ({"service": False}, "service"),
        ({"service": 1.0}, "service"),
        ({"service": None}, "service"),
        ({"service": [1]}, "service"),
        ({"description": 7}, "description"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 121}, "name"),
        ({"city": "x" * 121}, "city"),
        ({"description": "x" * 2001}, "description"),
        ({"service": 99}, "service"),
        ({"service": "99"}, "service"),
        ({"service": "no-such-service"}, "service"),
        ({"service": 2**70}, "service"),
        ({"phone": "123456"}, "phone"),
        ({"phone": "1234567890123456"}, "phone"),
        ({"phone": "555-CALL-NOW"}, "phone"),
        ({"phone": "555+0100000"}, "phone"),
        ({"name": "Ada\u0000Lovelace"}, "name"),
        ({"city": "\x00"}, "city"),
        ({"description": "a\u0000"}, "description"),
    ],
)
def test_invalid_field_is_422_keyed_by_the_field(client, seeded, api_key, changes, field):
    before = stored_state()

    response = post_lead(client, {**LEAD, **changes}, key=api_key)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert list(error["fields"]) == [field]
    assert all(isinstance(message, str) for message in error["fields"][field])
    assert stored_state() == before


@pytest.mark.parametrize("field", ["name", "phone", "city", "service"])
def test_missing_required_field_is_422(client, seeded, api_key, field):
    before = stored_state()
    body = {key: value for key, value in LEAD.items() if key != field}

    response = post_lead(client, body, key=api_key)

    assert response.status_code == 422
    assert list(response.json()["error"]["fields"]) == [field]
    assert stored_state() == before


def test_every_invalid_field_is_reported_at_once(client, seeded, api_key):
    response = post_lead(client, {"name": 1, "phone": "12", "service": "nope"}, key=api_key)

    assert response.status_code == 422
    assert set(response.json()["error"]["fields"]) == {"name", "phone", "city", "service"}


@pytest.mark.parametrize("field", ["name", "phone", "city", "service", "description"])
@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "x\\udbff"])
def test_unpaired_surrogate_is_422_not_500(client, seeded, api_key, field, escape):
    before = stored_state()
    body = json.dumps({**LEAD, field: "PLACEHOLDER"}).replace("PLACEHOLDER", escape)

    response = post_lead(client, body, key=api_key)

    assert response.status_code == 422
    assert list(response.json()["error"]["fields"]) == [field]
    assert stored_state() == before


def test_paired_surrogates_are_a_valid_character(client, seeded, api_key):
    body = json.dumps({**LEAD, "name": "PLACEHOLDER"}).replace("PLACEHOLDER", "Ada \\ud83d\\ude00")

    response = post_lead(client, body, key=api_key)

    assert response.status_code == 201
    assert Lead.objects.get().name == "Ada \U0001f600"


def test_inactive_service_is_422(client, seeded, api_key):
    Service.objects.filter(pk=1).update(active=False)
    before = stored_state()

    response = post_lead(client, key=api_key)

    assert response.status_code == 422
    assert list(response.json()["error"]["fields"]) == ["service"]
    assert stored_state() == before


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonp",
        "",
    ],
)
def test_other_media_types_are_415(client, seeded, api_key, content_type):
    before = stored_state()

    response = post_lead(client, json.dumps(LEAD), key=api_key, content_type=content_type)

    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert stored_state() == before


# --- Duplicates ----------------------------------------------------------------------------------


def test_same_phone_for_the_same_service_is_409_with_the_existing_lead(client, seeded, api_key):
    first = post_lead(client, {**LEAD, "phone": "+1 (555) 010-0000"}, key=api_key)
    before = stored_state()

    response = post_lead(client, {**LEAD, "phone": "+1.555.010.0000"}, key=api_key)

    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "duplicate_lead"
    assert error["lead_id"] == first.json()["id"]
    assert stored_state() == before


def test_duplicate_is_detected_through_the_alias_too(client, seeded, api_key):
    first = post_lead(client, key=api_key, path="/api/leads")

    response = post_lead(client, key=api_key, path="/api/request-service")

    assert response.status_code == 409
    assert response.json()["error"]["lead_id"] == first.json()["id"]


def test_same_phone_may_request_another_service(client, seeded, api_key):
    post_lead(client, key=api_key)

    response = post_lead(client, {**LEAD, "service": 2}, key=api_key)

    assert response.status_code == 201
    assert Lead.objects.filter(phone="+15550100000").count() == 2


def test_leading_plus_makes_a_different_phone(client, seeded, api_key):
    post_lead(client, {**LEAD, "phone": "+15550100000"}, key=api_key)

    response = post_lead(client, {**LEAD, "phone": "15550100000"}, key=api_key)

    assert response.status_code == 201


# --- Check order: size, credential, media type, JSON, fields, duplicate -----------------------


def test_oversized_body_without_key_is_413(client, seeded):
    response = post_lead(client, "x" * (64 * 1024 + 1))

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_wrong_key_with_wrong_media_type_is_401(client, seeded):
    response = post_lead(client, json.dumps(LEAD), key="ld_wrong", content_type="text/plain")

    assert response.status_code == 401


def test_wrong_media_type_with_malformed_json_is_415(client, seeded, api_key):
    response = post_lead(client, "{not json", key=api_key, content_type="text/plain")

    assert response.status_code == 415


def test_malformed_json_without_key_is_401(client, seeded):
    response = post_lead(client, "{not json")

    assert response.status_code == 401


def test_invalid_fields_of_a_duplicate_are_422(client, seeded, api_key):
    post_lead(client, key=api_key)

    response = post_lead(client, {**LEAD, "city": ""}, key=api_key)

    assert response.status_code == 422


# --- Busy ----------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_persistent_lock_conflict_is_503_busy_with_retry_after(client, seeded_tx, settings):
    _, raw = create_api_key(name="acme")
    settings.ALLOCATION_MAX_ATTEMPTS = 2
    settings.BUSY_RETRY_AFTER_SECONDS = 3
    before = stored_state()

    with cursor_locked(1):
        response = post_lead(client, key=raw)

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "busy"
    assert response["Retry-After"] == "3"
    assert stored_state() == before
