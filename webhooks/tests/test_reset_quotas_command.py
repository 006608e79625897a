"""`manage.py reset_quotas` against a live server: a real, signed HTTP request."""

from __future__ import annotations

from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings as settings_module
from django.core.management import call_command
from django.core.management.base import CommandError

from leaddist.tests.asgi_server import free_port, run_server
from providers.models import Provider
from webhooks.management.commands.reset_quotas import signing_secret
from webhooks.models import ProcessedEvent
from webhooks.signing import DEMO_WEBHOOK_SECRET
from webhooks.tests.helpers import SECRET, snapshot, submit_leads

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def live_server_url(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[str]:
    """The app served on a free port, on the test database, with WEBHOOK_SECRET set."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    with (
        django_db_blocker.unblock(),
        run_server(
            log, WEBHOOK_SECRET=SECRET, DB_POOL_MIN_SIZE="1", DB_POOL_MAX_SIZE="4"
        ) as server,
    ):
        yield f"{server.url}/api/webhook/reset-quota"


def run(url: str, *args: str) -> str:
    out = StringIO()
    call_command("reset_quotas", "--url", url, *args, stdout=out)
    return out.getvalue()


def test_command_applies_once_then_reports_a_duplicate(seeded_tx, live_server_url, settings):
    settings.WEBHOOK_SECRET = SECRET
    submit_leads(1, 2)

    first = run(live_server_url, "--event-id", "evt_cmd_1")
    second = run(live_server_url, "--event-id", "evt_cmd_1")

    assert "200 OK" in first
    assert '"status": "applied"' in first
    assert "200 OK" in second
    assert '"status": "duplicate"' in second
    assert set(Provider.objects.values_list("remaining_quota", "cycle")) == {(10, 2)}
    assert ProcessedEvent.objects.get().event_id == "evt_cmd_1"


def test_command_resets_only_the_given_providers(seeded_tx, live_server_url, settings):
    settings.WEBHOOK_SECRET = SECRET

    output = run(live_server_url, "--provider", "2", "--provider", "7")

    assert '"status": "applied"' in output
    assert dict(Provider.objects.values_list("pk", "cycle")) == {
        1: 1,
        2: 2,
        3: 1,
        4: 1,
        5: 1,
        6: 1,
        7: 2,
        8: 1,
    }
    event = ProcessedEvent.objects.get()
    assert event.provider_ids == [2, 7]
    assert f"eventId={event.event_id}" in output  # a fresh uuid4 by default


def test_command_fails_on_a_rejected_request_and_nothing_changes(
    seeded_tx, live_server_url, settings
):
    settings.WEBHOOK_SECRET = "whsec_" + "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldC13cm9uZyE="
    before = snapshot()

    with pytest.raises(CommandError, match="401"):
        run(live_server_url, "--event-id", "evt_cmd_wrong_secret")

    assert snapshot() == before
    assert not ProcessedEvent.objects.exists()


def test_command_fails_on_unknown_provider(seeded_tx, live_server_url, settings):
    settings.WEBHOOK_SECRET = SECRET

    with pytest.raises(CommandError, match="422"):
        run(live_server_url, "--provider", "999")


def test_command_fails_when_no_server_answers(settings):
    settings.WEBHOOK_SECRET = SECRET

    with pytest.raises(CommandError, match="failed"):
        run(f"http://127.0.0.1:{free_port()}/api/webhook/reset-quota")


@pytest.fixture(scope="module")
def demo_server_url(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[str]:
    """The app as `make run` serves it: the demo webhook secret, and nothing set elsewhere."""
    log = tmp_path_factory.mktemp("server") / "demo.log"
    with (
        django_db_blocker.unblock(),
        run_server(log, WEBHOOK_SECRET=DEMO_WEBHOOK_SECRET, DB_POOL_MAX_SIZE="4") as server,
    ):
        yield server.url


def test_from_a_fresh_shell_the_command_signs_with_the_demo_secret_of_make_run(
    seeded_tx, demo_server_url, settings, monkeypatch
):
    settings.DEBUG = True
    settings.WEBHOOK_SECRET = ""
    monkeypatch.setenv("PORT", demo_server_url.rsplit(":", 1)[1])
    out = StringIO()

    call_command("reset_quotas", "--event-id", "evt_fresh_shell", stdout=out)

    assert '"status": "applied"' in out.getvalue()
    assert "signed with the demo secret of `make run`" in out.getvalue()
    assert ProcessedEvent.objects.get().event_id == "evt_fresh_shell"


def test_the_demo_secret_is_the_one_make_run_gives_the_server():
    makefile = (Path(settings_module.BASE_DIR) / "Makefile").read_text()

    assert f"DEMO_WEBHOOK_SECRET := {DEMO_WEBHOOK_SECRET}\n" in makefile


def test_with_debug_off_and_no_secret_the_command_sends_unsigned(settings):
    settings.DEBUG = False
    settings.WEBHOOK_SECRET = ""

    assert signing_secret() == ("", "nothing: no WEBHOOK_SECRET")


def test_a_401_says_which_secret_to_export(seeded_tx, demo_server_url, settings):
    settings.WEBHOOK_SECRET = SECRET  # not the server's

    with pytest.raises(CommandError, match="Export the server's WEBHOOK_SECRET"):
        run(f"{demo_server_url}/api/webhook/reset-quota")
