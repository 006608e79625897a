"""Lead, allocation and API key admin: read-only engine rows, keys shown once and revocable."""

import re

import pytest
from django.urls import reverse

from allocation.models import Allocation, ApiKey, Lead
from allocation.services import LeadInput, create_api_key, submit_lead
from allocation.tests.factories import ApiKeyFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def lead_for(service_id, n=0):
    return LeadInput(
        service_id=service_id, name="Ada Lovelace", phone=f"+1555{n:07d}", city="London"
    )


@pytest.fixture
def leads(seeded):
    allocated = submit_lead(lead_for(1, 1))
    seeded.providers(5, 6, 7, 8).update(status="paused")
    waiting = submit_lead(lead_for(2, 2))
    return allocated, waiting


@pytest.mark.parametrize("model", ["lead", "allocation", "apikey"])
def test_changelists_render_for_staff(admin_client, leads, model):
    ApiKeyFactory()

    response = admin_client.get(reverse(f"admin:allocation_{model}_changelist"))

    assert response.status_code == 200


def test_lead_page_shows_its_allocations_and_trace_read_only(admin_client, leads):
    allocated, _ = leads

    response = admin_client.get(reverse("admin:allocation_lead_change", args=[allocated.pk]))

    html = response.content.decode()
    assert response.status_code == 200
    assert "<td>Provider 2</td><td>pool</td><td>selected</td>" in html
    assert "&quot;outcome&quot;: &quot;selected&quot;" in html
    assert 'name="status"' not in html
    assert 'name="_save"' not in html
    assert response.context["inline_admin_formsets"][0].formset.total_form_count() == 3


def test_waiting_lead_page_renders(admin_client, leads):
    _, waiting = leads

    response = admin_client.get(reverse("admin:allocation_lead_change", args=[waiting.pk]))

    assert response.status_code == 200
    assert "no_quota" in response.content.decode() or "paused" in response.content.decode()


def test_leads_cannot_be_added_changed_or_deleted_in_the_admin(admin_client, leads):
    allocated, _ = leads

    add = admin_client.get(reverse("admin:allocation_lead_add"))
    change = admin_client.post(
        reverse("admin:allocation_lead_change", args=[allocated.pk]), {"status": "waiting"}
    )
    delete = admin_client.post(
        reverse("admin:allocation_lead_delete", args=[allocated.pk]), {"post": "yes"}
    )

    assert [add.status_code, change.status_code, delete.status_code] == [403, 403, 403]
    assert Lead.objects.get(pk=allocated.pk).status == Lead.Status.ALLOCATED


def test_lead_list_filters_and_searches(admin_client, leads):
    allocated, waiting = leads
    url = reverse("admin:allocation_lead_changelist")

    by_status = admin_client.get(url, {"status__exact": "waiting"})
    by_service = admin_client.get(url, {"service__id__exact": "1"})
    by_phone = admin_client.get(url, {"q": "15550000002"})

    assert [lead.pk for lead in by_status.context["cl"].result_list] == [waiting.pk]
    assert [lead.pk for lead in by_service.context["cl"].result_list] == [allocated.pk]
    assert [lead.pk for lead in by_phone.context["cl"].result_list] == [waiting.pk]


def test_allocation_page_is_read_only(admin_client, leads):
    allocation = Allocation.objects.first()

    view = admin_client.get(reverse("admin:allocation_allocation_change", args=[allocation.pk]))
    add = admin_client.get(reverse("admin:allocation_allocation_add"))

    assert view.status_code == 200
    assert 'name="_save"' not in view.content.decode()
    assert add.status_code == 403


def test_creating_a_key_shows_the_raw_key_once(admin_client, seeded):
    response = admin_client.post(
        reverse("admin:allocation_apikey_add"), {"name": "crm"}, follow=True
    )

    key = ApiKey.objects.get(name="crm")
    shown = re.findall(r"<code>(ld_[^<]+)</code>", response.content.decode())
    assert len(shown) == 1
    raw = shown[0]
    assert ApiKey.hash_key(raw) == key.key_hash
    assert raw.startswith(key.key_prefix)
    later = admin_client.get(reverse("admin:allocation_apikey_change", args=[key.pk]))
    assert raw not in later.content.decode()
    assert key.key_hash not in later.content.decode()


def test_key_hash_is_never_shown(admin_client, seeded):
    key, _ = create_api_key(name="crm")

    pages = [
        admin_client.get(reverse("admin:allocation_apikey_changelist")),
        admin_client.get(reverse("admin:allocation_apikey_change", args=[key.pk])),
    ]

    assert all(key.key_hash not in page.content.decode() for page in pages)
    assert all(page.status_code == 200 for page in pages)


def test_add_key_form_asks_for_a_name_and_an_optional_rate_limit(admin_client, seeded):
    response = admin_client.get(reverse("admin:allocation_apikey_add"))

    assert set(response.context["adminform"].form.fields) == {"name", "rate_limit"}


def test_a_key_s_rate_limit_is_set_and_changed_in_the_admin(admin_client, seeded):
    admin_client.post(
        reverse("admin:allocation_apikey_add"), {"name": "crm", "rate_limit": "500/s"}
    )
    key = ApiKey.objects.get(name="crm")

    admin_client.post(
        reverse("admin:allocation_apikey_change", args=[key.pk]),
        {"name": "crm", "rate_limit": "20000/m"},
    )
    refused = admin_client.post(
        reverse("admin:allocation_apikey_change", args=[key.pk]),
        {"name": "crm", "rate_limit": "lots"},
    )

    key.refresh_from_db()
    assert key.rate_limit == "20000/m"
    assert refused.status_code == 200
    assert "Use a form like 1000/s, 600/m or 0." in refused.content.decode()


def test_revoke_action_sets_revoked_at(admin_client, seeded):
    kept, revoked = ApiKeyFactory(), ApiKeyFactory()

    response = admin_client.post(
        reverse("admin:allocation_apikey_changelist"),
        {"action": "revoke_selected", "_selected_action": [str(revoked.pk)]},
    )

    assert response.status_code == 302
    assert list(ApiKey.objects.usable().values_list("pk", flat=True)) == [kept.pk]
    assert ApiKey.objects.get(pk=revoked.pk).revoked_at is not None


def test_revoking_again_keeps_the_first_revocation_time(admin_client, seeded):
    key = ApiKeyFactory()
    url = reverse("admin:allocation_apikey_changelist")
    admin_client.post(url, {"action": "revoke_selected", "_selected_action": [str(key.pk)]})
    first = ApiKey.objects.get(pk=key.pk).revoked_at

    admin_client.post(url, {"action": "revoke_selected", "_selected_action": [str(key.pk)]})

    assert ApiKey.objects.get(pk=key.pk).revoked_at == first


def test_revoked_key_is_refused_by_the_api(admin_client, client, seeded):
    key, raw = create_api_key(name="crm")
    admin_client.post(
        reverse("admin:allocation_apikey_changelist"),
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
        reverse("admin:allocation_apikey_delete", args=[key.pk]), {"post": "yes"}
    )

    assert response.status_code == 403
    assert ApiKey.objects.filter(pk=key.pk).exists()
