"""API key admin: keys shown once, never their hash, revocable, never deleted."""

import re

import pytest
from django.urls import reverse

from credentials.models import ApiKey
from credentials.services import create_api_key
from credentials.tests.factories import ApiKeyFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def test_changelist_renders_for_staff(admin_client, seeded):
    ApiKeyFactory()

    response = admin_client.get(reverse("admin:credentials_apikey_changelist"))

    assert response.status_code == 200


def test_creating_a_key_shows_the_raw_key_once(admin_client, seeded):
    response = admin_client.post(
        reverse("admin:credentials_apikey_add"), {"name": "crm"}, follow=True
    )

    key = ApiKey.objects.get(name="crm")
    shown = re.findall(r"<code>(ld_[^<]+)</code>", response.content.decode())
    assert len(shown) == 1
    raw = shown[0]
    assert ApiKey.hash_key(raw) == key.key_hash
    assert raw.startswith(key.key_prefix)
    later = admin_client.get(reverse("admin:credentials_apikey_change", args=[key.pk]))
    assert raw not in later.content.decode()
    assert key.key_hash not in later.content.decode()


def test_key_hash_is_never_shown(admin_client, seeded):
    key, _ = create_api_key(name="crm")

    pages = [
        admin_client.get(reverse("admin:credentials_apikey_changelist")),
        admin_client.get(reverse("admin:credentials_apikey_change", args=[key.pk])),
    ]

    assert all(key.key_hash not in page.content.decode() for page in pages)
    assert all(page.status_code == 200 for page in pages)


def test_add_key_form_asks_for_a_name_and_an_optional_rate_limit(admin_client, seeded):
    response = admin_client.get(reverse("admin:credentials_apikey_add"))

    assert set(response.context["adminform"].form.fields) == {"name", "rate_limit"}


def test_a_key_s_rate_limit_is_set_and_changed_in_the_admin(admin_client, seeded):
    admin_client.post(
        reverse("admin:credentials_apikey_add"), {"name": "crm", "rate_limit": "500/s"}
    )
    key = ApiKey.objects.get(name="crm")

    admin_client.post(
        reverse("admin:credentials_apikey_change", args=[key.pk]),
        {"name": "crm", "rate_limit": "20000/m"},
    )
    refused = admin_client.post(
        reverse("admin:credentials_apikey_change", args=[key.pk]),
        {"name": "crm", "rate_limit": "lots"},
    )

    key.refresh_from_db()
    assert key.rate_limit == "20000/m"
    assert refused.status_code == 200
    assert "Use a form like 1000/s, 600/m or 0." in refused.content.decode()


def test_revoke_action_sets_revoked_at(admin_client, seeded):
    kept, revoked = ApiKeyFactory(), ApiKeyFactory()

    response = admin_client.post(
        reverse("admin:credentials_apikey_changelist"),
        {"action": "revoke_selected", "_selected_action": [str(revoked.pk)]},
    )

    assert response.status_code == 302
    assert list(ApiKey.objects.usable().values_list("pk", flat=True)) == [kept.pk]
    assert ApiKey.objects.get(pk=revoked.pk).revoked_at is not None


def test_revoking_again_keeps_the_first_revocation_time(admin_client, seeded):
    key = ApiKeyFactory()
    url = reverse("admin:credentials_apikey_changelist")
    admin_client.post(url, {"action": "revoke_selected", "_selected_action": [str(key.pk)]})
    first = ApiKey.objects.get(pk=key.pk).revoked_at

    admin_client.post(url, {"action": "revoke_selected", "_selected_action": [str(key.pk)]})

    assert ApiKey.objects.get(pk=key.pk).revoked_at == first


def test_revoked_key_is_refused_by_the_api(admin_client, client, seeded):
    key, raw = create_api_key(name="crm")
    admin_client.post(
        reverse("admin:credentials_apikey_changelist"),
        {"action": "revoke_selected", "_selected_action": [str(key.pk)]},
    )

    response = client.post(
        "/api/leads",
        {"name": "Ada", "phone": "+15550100", "city": "Paris", "service": 1},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )

    assert response.status_code == 401


def test_keys_cannot_be_deleted(admin_client, seeded):
    key = ApiKeyFactory()

    response = admin_client.post(
        reverse("admin:credentials_apikey_delete", args=[key.pk]), {"post": "yes"}
    )

    assert response.status_code == 403
    assert ApiKey.objects.filter(pk=key.pk).exists()
