"""Self-service (SPEC §9): pause and resume, the delivery endpoint and its secret, through the
admin's services, with audit lines and admin history naming the provider user."""

from __future__ import annotations

import json
import logging
import re

import pytest
from django.contrib.admin.models import LogEntry

from allocation.models import Lead
from delivery.models import Endpoint
from providers.models import Provider
from returns.tests.support import allocated_lead

pytestmark = pytest.mark.django_db


def audit_lines(caplog) -> list[dict]:
    return [
        json.loads(record.getMessage())
        for record in caplog.records
        if record.name == "leaddist.audit"
    ]


def test_pause_and_resume_name_the_provider_user(
    provider_client, provider_account, caplog, django_capture_on_commit_callbacks
):
    caplog.set_level(logging.INFO, logger="leaddist.audit")

    paused = provider_client.post("/portal/pause", follow=True)
    assert Provider.objects.get(pk=2).status == "paused"
    with django_capture_on_commit_callbacks(execute=True):
        provider_client.post("/portal/resume")

    assert "Paused: you get no new leads." in paused.content.decode()
    assert Provider.objects.get(pk=2).status == "active"
    lines = [line for line in audit_lines(caplog) if line["event"] == "provider_status"]
    assert [(line["who"], line["status"]) for line in lines] == [
        ("provider:p2-owner", "paused"),
        ("provider:p2-owner", "active"),
    ]
    history = LogEntry.objects.filter(object_id="2").order_by("pk")
    assert [(e.user_id, e.change_message) for e in history] == [
        (provider_account.user_id, "Paused from the portal"),
        (provider_account.user_id, "Resumed from the portal"),
    ]


def test_resuming_drains_leads_waiting_for_the_provider(
    provider_client, seeded, django_capture_on_commit_callbacks
):
    Provider.objects.filter(pk=4).update(status="paused")
    provider_client.post("/portal/pause")
    lead = allocated_lead()
    assert lead.status == Lead.Status.WAITING

    with django_capture_on_commit_callbacks(execute=True):
        provider_client.post("/portal/resume")

    lead.refresh_from_db()
    assert lead.status == Lead.Status.ALLOCATED


def test_a_pause_over_someone_elses_change_is_refused(provider_client, seeded):
    version = seeded.provider(2).version
    Provider.objects.filter(pk=2).update(name="Renamed by staff")

    response = provider_client.post("/portal/pause", {"seen_version": version}, follow=True)

    assert "changed by someone else" in response.content.decode()
    assert Provider.objects.get(pk=2).status == "active"


def test_setting_the_webhook_url_shows_its_new_secret_once(
    provider_client, settings, caplog, django_capture_on_commit_callbacks
):
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = True
    caplog.set_level(logging.INFO, logger="leaddist.audit")

    with django_capture_on_commit_callbacks(execute=True):
        response = provider_client.post(
            "/portal/endpoint", {"url": "http://127.0.0.1:9/hook", "email": "ops@p2.test"}
        )

    endpoint = Endpoint.objects.get(provider_id=2)
    assert endpoint.url == "http://127.0.0.1:9/hook"
    assert endpoint.email == "ops@p2.test"
    page = response.content.decode()
    assert endpoint.signing_secret in page
    assert response["Cache-Control"] == "no-store"
    assert endpoint.signing_secret not in provider_client.get("/portal/").content.decode()
    lines = [line for line in audit_lines(caplog) if line["event"] == "delivery_endpoint"]
    assert lines[0]["who"] == "provider:p2-owner"


def test_the_ssrf_guard_refuses_a_private_target(provider_client, settings):
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = False

    response = provider_client.post(
        "/portal/endpoint", {"url": "https://169.254.169.254/latest", "email": ""}, follow=True
    )

    assert "Nothing was saved" in response.content.decode()
    assert not Endpoint.objects.filter(provider_id=2).exists()


def test_rotating_the_secret_replaces_it_and_shows_the_new_one_once(provider_client, settings):
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = True
    provider_client.post("/portal/endpoint", {"url": "http://127.0.0.1:9/hook", "email": ""})
    old = Endpoint.objects.get(provider_id=2).signing_secret

    response = provider_client.post("/portal/endpoint/rotate")

    new = Endpoint.objects.get(provider_id=2).signing_secret
    assert new != old
    shown = re.search(r"<code data-new-secret>([^<]+)</code>", response.content.decode())
    assert shown.group(1) == new


def test_rotating_without_a_webhook_url_explains_why_not(provider_client):
    response = provider_client.post("/portal/endpoint/rotate", follow=True)

    assert "Set a webhook URL first" in response.content.decode()


# --- The same for scripts, in JSON -----------------------------------------------------------


def test_scripts_pause_and_resume_in_json(provider_client, provider_account):
    paused = provider_client.post("/portal/api/pause")
    resumed = provider_client.post("/portal/api/resume")

    assert paused.json() == {"status": "paused"}
    assert resumed.json() == {"status": "active"}
    assert Provider.objects.get(pk=2).status == "active"
    assert LogEntry.objects.filter(object_id="2", user_id=provider_account.user_id).count() == 2


def test_scripts_read_and_set_the_endpoint_in_json(provider_client, settings):
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = True

    before = provider_client.get("/portal/api/endpoint").json()
    changed = provider_client.put(
        "/portal/api/endpoint",
        {"url": "http://127.0.0.1:9/hook", "email": "ops@p2.test"},
        content_type="application/json",
    )
    after = provider_client.get("/portal/api/endpoint").json()
    rotated = provider_client.post("/portal/api/endpoint/rotate-secret")

    assert before == {"url": "", "email": "", "has_secret": False, "new_secret": None}
    assert changed.status_code == 200
    assert changed["Cache-Control"] == "no-store"
    first_secret = changed.json()["new_secret"]
    assert first_secret.startswith("whsec_")
    assert after == {
        "url": "http://127.0.0.1:9/hook",
        "email": "ops@p2.test",
        "has_secret": True,
        "new_secret": None,
    }
    assert rotated.json()["new_secret"] not in (None, first_secret)
    assert Endpoint.objects.get(provider_id=2).signing_secret == rotated.json()["new_secret"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "https://169.254.169.254/x"}, "url"),
        ({"email": "not an email"}, "email"),
        ({"url": 5}, "url"),
        ({"webhook": "x"}, "webhook"),
    ],
)
def test_a_refused_endpoint_is_422_by_field(provider_client, settings, body, field):
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = False

    response = provider_client.put("/portal/api/endpoint", body, content_type="application/json")

    assert response.status_code == 422
    assert field in response.json()["error"]["fields"]
    assert not Endpoint.objects.filter(provider_id=2).exists()


def test_rotating_without_a_webhook_is_409(provider_client):
    response = provider_client.post("/portal/api/endpoint/rotate-secret")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "no_webhook"
