import pytest
from django.test import Client
from django.urls import reverse

from allocation.models import Lead
from intake.tests.support import cursor_locked, stored_state
from providers.models import Provider, Service

URL = "/request-service"
FORM = {"name": "Ada Lovelace", "phone": "+44 20 7946 0000", "city": "London", "service": "1"}


def test_url_is_named_in_the_allocation_namespace():
    assert reverse("intake:request_service") == URL


def test_form_page_is_public_and_carries_a_csrf_token(client, seeded):
    response = client.get(URL)

    assert response.status_code == 200
    assert b'name="csrfmiddlewaretoken"' in response.content
    assert b'<option value="1">Service 1</option>' in response.content


def test_inactive_services_are_not_offered(client, seeded):
    Service.objects.filter(pk=2).update(active=False)

    response = client.get(URL)

    assert b"Service 2" not in response.content


def test_valid_post_stores_the_lead_and_shows_its_three_providers(client, seeded):
    response = client.post(URL, FORM)

    assert response.status_code == 200
    lead = Lead.objects.get()
    assert (lead.phone, lead.source, lead.status) == ("+442079460000", "form", "allocated")
    page = response.content.decode()
    assert page.index("Provider 1") < page.index("Provider 2") < page.index("Provider 3")
    assert "csrfmiddlewaretoken" not in page  # the outcome replaces the form


def test_post_without_eligible_providers_shows_the_waiting_outcome(client, seeded):
    Provider.objects.filter(pk__in=[2, 3, 4]).update(remaining_quota=0)

    response = client.post(URL, FORM)

    assert response.status_code == 200
    assert b"waiting" in response.content
    assert Lead.objects.get().status == "waiting"


def test_second_request_for_the_same_phone_and_service_shows_the_duplicate_notice(client, seeded):
    client.post(URL, FORM)
    before = stored_state()

    response = client.post(URL, {**FORM, "phone": "+442079460000"})

    assert response.status_code == 409
    assert b"We already have a request" in response.content
    assert stored_state() == before


def test_invalid_post_shows_field_errors_and_stores_nothing(client, seeded):
    before = stored_state()

    response = client.post(URL, {**FORM, "phone": "12", "city": ""})

    assert response.status_code == 422
    form = response.context["form"]
    assert set(form.errors) == {"phone", "city"}
    assert b"Enter a phone number of 7 to 15 digits" in response.content
    assert stored_state() == before


@pytest.mark.parametrize("bad", ["a\x00b", "\x00"])
def test_nul_character_in_the_form_is_a_field_error(client, seeded, bad):
    response = client.post(URL, {**FORM, "name": bad})

    assert response.status_code == 422
    assert Lead.objects.count() == 0


def test_post_without_csrf_token_is_403_and_stores_nothing(seeded):
    client = Client(enforce_csrf_checks=True)

    response = client.post(URL, FORM)

    assert response.status_code == 403
    assert Lead.objects.count() == 0


def test_post_with_its_csrf_token_is_accepted(seeded):
    client = Client(enforce_csrf_checks=True)
    client.get(URL)

    response = client.post(URL, {**FORM, "csrfmiddlewaretoken": client.cookies["csrftoken"].value})

    assert response.status_code == 200
    assert Lead.objects.count() == 1


def test_slash_variant_is_404(client, seeded):
    assert client.get(URL + "/").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_busy_engine_shows_a_retry_message(client, seeded_tx, settings):
    settings.ALLOCATION_MAX_ATTEMPTS = 2
    before = stored_state()

    with cursor_locked(1):
        response = client.post(URL, FORM)

    assert response.status_code == 503
    assert response["Retry-After"] == str(settings.BUSY_RETRY_AFTER_SECONDS)
    assert b"try again" in response.content
    assert stored_state() == before
