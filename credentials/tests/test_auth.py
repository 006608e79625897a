from datetime import timedelta

import pytest
from django.test import Client, RequestFactory
from django.utils import timezone

from allocation.models import Lead
from credentials.auth import ApiKeyOrStaffSession, Forbidden, source_name, usable_key
from credentials.models import ApiKey
from credentials.services import create_api_key, revoke_api_keys
from intake.tests.support import post_lead, stored_state


@pytest.fixture
def api_key(db):
    return create_api_key(name="acme")


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user(username="olga", password="pw", is_staff=True)


@pytest.fixture
def member(django_user_model):
    return django_user_model.objects.create_user(username="max", password="pw")


def csrf_client(user):
    """A browser-like client: CSRF enforced, logged in, holding its csrftoken cookie."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.get("/request-service")  # the page sets the csrftoken cookie
    return client


def assert_rejected(response, status, code):
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


# --- API keys ------------------------------------------------------------------------------------


def test_valid_key_is_accepted_and_names_the_lead_source(client, seeded, api_key):
    response = post_lead(client, key=api_key[1])

    assert response.status_code == 201
    assert Lead.objects.get().source == "acme"


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer ld_wrong", "Bearer ", "Bearer", "Basic dXNlcjpwdw==", "ld_notbearer"],
)
def test_missing_or_wrong_credential_is_401(client, seeded, authorization):
    before = stored_state()
    headers = {"Authorization": authorization} if authorization is not None else {}

    response = client.post(
        "/api/leads", data="{}", content_type="application/json", headers=headers
    )

    assert_rejected(response, 401, "unauthorized")
    assert stored_state() == before


def test_bearer_scheme_is_case_insensitive(client, seeded, api_key):
    response = client.post(
        "/api/leads",
        data='{"name": "A", "phone": "5550100000", "city": "X", "service": 1}',
        content_type="application/json",
        headers={"Authorization": f"bearer {api_key[1]}"},
    )

    assert response.status_code == 201


def test_revoked_key_is_401(client, seeded, api_key):
    key, raw = api_key
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    before = stored_state()

    response = post_lead(client, key=raw)

    assert_rejected(response, 401, "unauthorized")
    assert stored_state() == before


def test_key_use_is_recorded_at_first_use_and_not_rewritten_within_a_minute(
    client, seeded, api_key
):
    key, raw = api_key

    post_lead(client, {"name": "x"}, key=raw)
    first_use = ApiKey.objects.get(pk=key.pk).last_used_at
    post_lead(client, {"name": "y"}, key=raw)

    assert first_use is not None
    assert ApiKey.objects.get(pk=key.pk).last_used_at == first_use


def test_key_use_is_rewritten_once_a_minute_has_passed(client, seeded, api_key):
    key, raw = api_key
    long_ago = timezone.now() - timedelta(seconds=61)
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=long_ago)

    post_lead(client, {"name": "x"}, key=raw)

    assert ApiKey.objects.get(pk=key.pk).last_used_at > long_ago


def test_key_wins_over_a_session(seeded, api_key, member):
    client = Client(enforce_csrf_checks=True)
    client.force_login(member)

    response = post_lead(client, key=api_key[1])

    assert response.status_code == 201
    assert Lead.objects.get().source == "acme"


# --- Sessions ------------------------------------------------------------------------------------


def test_anonymous_request_is_401_even_when_csrf_is_enforced(seeded):
    client = Client(enforce_csrf_checks=True)

    response = post_lead(client)

    assert_rejected(response, 401, "unauthorized")


def test_non_staff_session_is_403(seeded, member):
    before = stored_state()
    client = csrf_client(member)

    response = post_lead(client, HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value)

    assert_rejected(response, 403, "forbidden")
    assert stored_state() == before


def test_staff_session_without_csrf_token_is_403(seeded, staff):
    before = stored_state()
    client = csrf_client(staff)

    response = post_lead(client)

    assert_rejected(response, 403, "forbidden")
    assert stored_state() == before


def test_staff_session_with_a_wrong_csrf_token_is_403(seeded, staff):
    client = csrf_client(staff)

    response = post_lead(client, HTTP_X_CSRFTOKEN="x" * 32)

    assert_rejected(response, 403, "forbidden")


def test_staff_session_with_its_csrf_token_is_accepted(seeded, staff):
    client = csrf_client(staff)

    response = post_lead(client, HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value)

    assert response.status_code == 201
    assert Lead.objects.get().source == "staff:olga"


def test_staff_session_needs_no_csrf_token_to_read(rf: RequestFactory, staff):
    request = rf.get("/api/leads")
    request.user = staff

    assert ApiKeyOrStaffSession()(request) == staff


def test_non_staff_session_cannot_read_either(rf: RequestFactory, member):
    request = rf.get("/api/leads")
    request.user = member

    with pytest.raises(Forbidden):
        ApiKeyOrStaffSession()(request)


def test_source_name_is_the_key_name_or_the_staff_username(api_key, staff):
    assert source_name(api_key[0]) == "acme"
    assert source_name(staff) == "staff:olga"


@pytest.mark.django_db
def test_the_key_lookup_loads_the_key_as_stored():
    key, raw = create_api_key(name="feed")
    ApiKey.objects.filter(pk=key.pk).update(rate_limit="5/s", last_used_at=timezone.now())
    stored = ApiKey.objects.get(pk=key.pk)

    found = usable_key(raw)

    assert (found.pk, found.name, found.key_prefix, found.rate_limit) == (
        stored.pk,
        stored.name,
        stored.key_prefix,
        stored.rate_limit,
    )
    assert found.last_used_at == stored.last_used_at
    assert usable_key(raw + "x") is None


@pytest.mark.django_db
def test_a_key_revoked_elsewhere_is_refused_once_this_process_forgets_it(monkeypatch, settings):
    settings.API_KEY_CACHE_SECONDS = 2
    clock = [1000.0]
    monkeypatch.setattr("credentials.auth.time.monotonic", lambda: clock[0])
    key, raw = create_api_key(name="feed")
    assert usable_key(raw) is not None
    # Another process revokes it: this one keeps its verdict for API_KEY_CACHE_SECONDS.
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())

    remembered = usable_key(raw)
    clock[0] += 2
    forgotten = usable_key(raw)

    assert remembered is not None
    assert forgotten is None


@pytest.mark.django_db
def test_revoking_through_the_service_is_refused_at_once_in_this_process(client, seeded):
    key, raw = create_api_key(name="feed")
    assert usable_key(raw) is not None

    revoke_api_keys(ApiKey.objects.filter(pk=key.pk))

    assert usable_key(raw) is None
