"""`manage.py reset_quotas` against a live server: a real, signed HTTP request."""

from __future__ import annotations

from collections.abc import Iterator
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from allocation.tests.asgi_server import free_port, run_server
from providers.models import Provider
from webhooks.models import ProcessedEvent
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
