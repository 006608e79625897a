"""Lead and allocation admin: read-only engine rows."""

import pytest
from django.urls import reverse

from allocation.models import Allocation, Lead
from allocation.services import LeadInput, submit_lead
from credentials.tests.factories import ApiKeyFactory

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


@pytest.mark.parametrize("model", ["lead", "allocation"])
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
