"""The operator's side: endpoint fields on the provider page, the deliveries list and resend,
the set_delivery command, and the deliveries in GET /api/leads/{id}."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone
from standardwebhooks import Webhook

from delivery.models import Delivery, Endpoint
from delivery.tests.support import plain_endpoint, submit

pytestmark = pytest.mark.django_db


def provider_post(provider, **delivery):
    """The change form as posted, opened at the provider's current version."""
    return {
        "name": provider.name,
        "quota": provider.quota,
        "status": provider.status,
        "seen_version": provider.version,
    } | delivery


def change_url(pk):
    return reverse("admin:providers_provider_change", args=[pk])


def shown_messages(response):
    return [str(m) for m in response.context["messages"]]


def test_saving_a_webhook_url_creates_a_secret_shown_once(admin_client, seeded, settings):
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = True
    provider = seeded.provider(1)

    response = admin_client.post(
        change_url(1),
        provider_post(
            provider, webhook_url="http://127.0.0.1:9/hook", delivery_email="a@b.example"
        ),
        follow=True,
    )

    endpoint = Endpoint.objects.get(provider_id=1)
    assert (endpoint.url, endpoint.email) == ("http://127.0.0.1:9/hook", "a@b.example")
    secret = endpoint.signing_secret
    assert secret.startswith("whsec_")
    Webhook(secret)  # a valid Standard Webhooks secret
    assert any(secret in m for m in shown_messages(response))
    page = admin_client.get(change_url(1)).content.decode()
    assert secret not in page  # shown once, never again
    assert endpoint.secret not in page  # nor its stored form
    assert "http://127.0.0.1:9/hook" in page


def test_an_unsafe_webhook_url_is_refused_on_the_provider_page(admin_client, seeded, settings):
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = False
    provider = seeded.provider(1)

    response = admin_client.post(
        change_url(1), provider_post(provider, webhook_url="https://169.254.169.254/latest")
    )

    assert response.status_code == 200
    assert "metadata" in str(response.context["adminform"].form.errors["webhook_url"])
    assert not Endpoint.objects.exists()


def test_saving_a_provider_without_delivery_fields_leaves_its_endpoint_alone(admin_client, seeded):
    plain_endpoint(1, url="https://p1.example/hook")
    provider = seeded.provider(1)

    admin_client.post(
        change_url(1),
        provider_post(provider, name="Renamed", webhook_url="https://p1.example/hook"),
    )

    assert seeded.provider(1).name == "Renamed"
    assert Endpoint.objects.get().url == "https://p1.example/hook"


def test_deliveries_are_listed_filtered_and_resent(admin_client, seeded):
    plain_endpoint(1, url="https://p1.example/hook", email="p1@example.com")
    submit(1, 1)
    Delivery.objects.filter(channel="webhook").update(status="failed", attempts=9)
    failed = Delivery.objects.get(channel="webhook")
    url = reverse("admin:delivery_delivery_changelist")

    listing = admin_client.get(url, {"status__exact": "failed", "channel__exact": "webhook"})
    detail = admin_client.get(reverse("admin:delivery_delivery_change", args=[failed.pk]))
    admin_client.post(
        url, {"action": "resend_selected", "_selected_action": [str(failed.pk)]}, follow=True
    )

    assert listing.status_code == 200
    assert list(listing.context["cl"].result_list) == [failed]
    assert detail.status_code == 200
    failed.refresh_from_db()
    assert (failed.status, failed.generation, failed.attempts) == ("pending", 1, 9)
    assert failed.next_attempt_at <= timezone.now()  # due again at once, in the queue


def test_set_delivery_prints_a_new_secret_last_and_rotates_it(seeded, settings):
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = True
    out = StringIO()

    call_command("set_delivery", "2", "--url", "http://127.0.0.1:9/h", stdout=out)
    first = out.getvalue().strip().splitlines()[-1]
    call_command("set_delivery", "2", "--email", "two@example.com", stdout=(same := StringIO()))
    call_command("set_delivery", "2", "--rotate-secret", stdout=(rotated := StringIO()))

    assert first.startswith("whsec_")
    assert "whsec_" not in same.getvalue()  # nothing new to show
    second = rotated.getvalue().strip().splitlines()[-1]
    assert second.startswith("whsec_")
    assert second != first
    endpoint = Endpoint.objects.get()
    assert (endpoint.url, endpoint.email, endpoint.signing_secret) == (
        "http://127.0.0.1:9/h",
        "two@example.com",
        second,
    )

    call_command("set_delivery", "2", "--url", "", stdout=StringIO())

    assert (Endpoint.objects.get().url, Endpoint.objects.get().secret) == ("", "")


def test_set_delivery_clears_and_refuses_unsafe_urls(seeded, settings):
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = False
    plain_endpoint(3, url="https://p3.example/hook")

    call_command("set_delivery", "3", "--clear", stdout=StringIO())
    with pytest.raises(CommandError, match="Refused URL"):
        call_command("set_delivery", "3", "--url", "https://10.0.0.1/x", stdout=StringIO())
    with pytest.raises(CommandError, match="No provider"):
        call_command("set_delivery", "999", "--email", "x@example.com", stdout=StringIO())

    assert not Endpoint.objects.exists()


def test_the_lead_api_lists_its_deliveries(admin_client, seeded):
    plain_endpoint(2, url="https://p2.example/hook", email="p2@example.com")
    lead = submit(1, 1)

    body = admin_client.get(f"/api/leads/{lead.pk}").json()

    ids = list(Delivery.objects.order_by("id").values_list("pk", flat=True))
    due = lead.allocated_at.isoformat().replace("+00:00", "Z")
    timed = {"updated_at", "next_attempt_at"}
    assert [{k: v for k, v in d.items() if k not in timed} for d in body["deliveries"]] == [
        {
            "id": ids[1],
            "provider_id": 2,
            "channel": "email",
            "status": "pending",
            "attempts": 0,
            "last_status_code": None,
            "last_error": "",
        },
        {
            "id": ids[0],
            "provider_id": 2,
            "channel": "webhook",
            "status": "pending",
            "attempts": 0,
            "last_status_code": None,
            "last_error": "",
        },
    ]
    # Due at once: at the lead's allocation.
    assert {d["next_attempt_at"][:19] for d in body["deliveries"]} == {due[:19]}
    assert all(d["updated_at"] for d in body["deliveries"])
