"""`manage.py reset_quotas` against a live server: a real, signed HTTP request."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from providers.models import Provider
from webhooks.models import ProcessedEvent
from webhooks.tests.helpers import SECRET, snapshot, submit_leads

pytestmark = pytest.mark.django_db(transaction=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url_of_tests() -> str:
    db = connection.settings_dict
    auth = quote(db["USER"] or "", safe="")
    if db.get("PASSWORD"):
        auth += ":" + quote(db["PASSWORD"], safe="")
    host = db["HOST"] or "127.0.0.1"
    port = db["PORT"] or 5432
    return f"postgres://{auth}@{host}:{port}/{db['NAME']}"


@pytest.fixture(scope="module")
def live_server_url(django_db_setup, django_db_blocker) -> Iterator[str]:
    """daphne serving leaddist on a free port, on the test database, with WEBHOOK_SECRET set."""
    with django_db_blocker.unblock():
        database_url = database_url_of_tests()
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "WEBHOOK_SECRET": SECRET,
        "DB_POOL_MIN_SIZE": "1",
        "DB_POOL_MAX_SIZE": "4",
    }
    daphne = Path(sys.executable).with_name("daphne")
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            [str(daphne), "-b", "127.0.0.1", "-p", str(port), "leaddist.asgi:application"],
            cwd=django_settings.BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                if server.poll() is not None:
                    log.seek(0)
                    pytest.fail(f"daphne exited early:\n{log.read().decode(errors='replace')}")
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail("daphne did not answer /healthz within 60 seconds")
                time.sleep(0.2)
            yield f"{base}/api/webhook/reset-quota"
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


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
