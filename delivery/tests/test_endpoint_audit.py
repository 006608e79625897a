"""Who changed where leads go: one ``leaddist.audit`` line per committed endpoint change, from
the provider page and from set_delivery, with the URL's host only and never a secret."""

from __future__ import annotations

import json
import logging
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from delivery.endpoints import endpoint_changes
from delivery.models import Endpoint
from delivery.tests.support import plain_endpoint
from delivery.tests.test_admin import change_url, provider_post

pytestmark = pytest.mark.django_db


@pytest.fixture
def audit(caplog, django_capture_on_commit_callbacks):
    """The endpoint lines logged so far (the line is written on commit)."""
    caplog.set_level(logging.INFO, logger="leaddist.audit")

    def lines() -> list[dict]:
        found = [json.loads(r.getMessage()) for r in caplog.records if r.name == "leaddist.audit"]
        return [line for line in found if line["event"] == "delivery_endpoint"]

    return lines


def command(django_capture_on_commit_callbacks, *args: str) -> str:
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("set_delivery", *args, stdout=out)
    return out.getvalue()


def without_duration(line: dict) -> dict:
    assert isinstance(line.pop("duration_ms"), float)
    return line


def test_set_delivery_logs_each_change_as_the_command_with_hosts_only(
    seeded, settings, audit, caplog, django_capture_on_commit_callbacks
):
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = True
    run = django_capture_on_commit_callbacks

    first = command(run, "2", "--url", "http://127.0.0.1:9/h?token=abc")
    command(run, "2", "--email", "two@example.com")
    command(run, "2", "--email", "two@example.com")  # no change: no line
    rotated = command(run, "2", "--rotate-secret")
    command(run, "2", "--url", "http://localhost:9/other")
    command(run, "2", "--url", "")
    command(run, "2", "--clear")

    assert [without_duration(line) for line in audit()] == [
        {
            "event": "delivery_endpoint",
            "who": "command",
            "provider_id": 2,
            "url": "set",
            "url_host": "127.0.0.1",
            "secret": "created",
        },
        {"event": "delivery_endpoint", "who": "command", "provider_id": 2, "email": "set"},
        {"event": "delivery_endpoint", "who": "command", "provider_id": 2, "secret": "rotated"},
        {
            "event": "delivery_endpoint",
            "who": "command",
            "provider_id": 2,
            "url": "changed",
            "url_host": "localhost",
            "previous_url_host": "127.0.0.1",
        },
        {
            "event": "delivery_endpoint",
            "who": "command",
            "provider_id": 2,
            "url": "cleared",
            "previous_url_host": "localhost",
            "secret": "removed",
        },
        {"event": "delivery_endpoint", "who": "command", "provider_id": 2, "email": "cleared"},
    ]
    assert not Endpoint.objects.exists()
    secrets = [text.strip().splitlines()[-1] for text in (first, rotated)]
    assert all(secret.startswith("whsec_") for secret in secrets)
    for secret in secrets:
        assert secret not in caplog.text
    assert "token" not in caplog.text
    assert "/h" not in caplog.text
    assert "two@example.com" not in caplog.text


def test_a_refused_url_logs_nothing(seeded, settings, audit, django_capture_on_commit_callbacks):
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = False

    with pytest.raises(CommandError, match="Refused URL"):
        command(django_capture_on_commit_callbacks, "3", "--url", "https://10.0.0.1/x")

    assert audit() == []


def test_the_provider_page_logs_the_staff_user_who_changed_the_endpoint(
    admin_client, admin_user, seeded, settings, audit, django_capture_on_commit_callbacks
):
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = True
    plain_endpoint(1, url="https://p1.example/hook")
    provider = seeded.provider(1)

    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(
            change_url(1),
            provider_post(
                provider,
                webhook_url="http://127.0.0.1:9/hook",
                delivery_email="a@b.example",
                rotate_secret="on",
            ),
        )

    [line] = audit()
    assert without_duration(line) == {
        "event": "delivery_endpoint",
        "who": f"staff:{admin_user.get_username()}",
        "provider_id": 1,
        "url": "changed",
        "url_host": "127.0.0.1",
        "previous_url_host": "p1.example",
        "email": "set",
        "secret": "rotated",
    }


def test_a_change_rolled_back_logs_nothing(seeded, settings, audit):
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = True
    # Without capturing on-commit callbacks the test's transaction never commits: like a
    # caller's transaction rolled back, it must leave no line.
    call_command("set_delivery", "2", "--url", "http://127.0.0.1:9/h", stdout=StringIO())

    assert Endpoint.objects.filter(provider_id=2).exists()
    assert audit() == []


def test_changes_name_only_what_changed():
    assert endpoint_changes(("", "", ""), ("", "", "")) == {}
    assert endpoint_changes(
        ("https://a.example/x", "", "s1"), ("https://a.example/y", "", "s1")
    ) == {
        "url": "changed",
        "url_host": "a.example",
        "previous_url_host": "a.example",
    }
