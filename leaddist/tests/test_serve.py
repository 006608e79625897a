"""The production launcher (make serve), several processes, and live events between them."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from allocation.models import Lead
from allocation.services import LeadInput, submit_lead
from allocation.tasks import drain_waiting_leads
from allocation.tests.test_concurrency import assert_invariants
from credentials.services import create_api_key
from dashboard.tests.test_sse import _open_stream, _read_until, _session_cookie
from leaddist.tests.asgi_server import database_url_for_tests, free_port
from providers.models import Provider


@pytest.fixture
def staff_user(transactional_db):
    return get_user_model().objects.create_user(username="watcher", password="x", is_staff=True)


@pytest.mark.parametrize("value", ["twenty", "-1", "20"])
def test_the_launcher_refuses_a_delivery_niceness_outside_0_to_19(value):
    result = launch("--workers", "1", **(PRODUCTION | {"DELIVERY_WORKER_NICENESS": value}))

    assert result.returncode != 0
    assert "DELIVERY_WORKER_NICENESS must be a whole number from 0 to 19" in result.stderr


@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
def nice_of(pid: int) -> int:
    """A process's nice value, field 19 of /proc/PID/stat (after the command in parentheses)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


def test_two_workers_on_one_port_take_a_storm_of_leads_and_keep_the_invariants(
    seeded_tx, asgi_server_factory, redis_url
):
    """210 leads through the real HTTP API, 8 clients at once, two worker processes, seed
    quotas running out mid-storm: every request answered, and the invariants hold."""
    _, key = create_api_key(name="storm")
    server = asgi_server_factory(workers=2, REDIS_URL=redis_url, RATE_LIMIT_PER_KEY="0")

    def post(n: int) -> int:
        body = {"name": "Ada", "phone": f"+1555{n:07d}", "city": "Paris", "service": n % 3 + 1}
        headers = {"Authorization": f"Bearer {key}"}
        answer = httpx.post(server.url + "/api/leads", json=body, headers=headers, timeout=60)
        return answer.status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = Counter(pool.map(post, range(210)))

    assert set(statuses) <= {201, 202}, (statuses, server.output())
    assert Lead.objects.count() == 210
    assert Lead.objects.allocated().count() == statuses[201]
    assert 0 < statuses[201] <= 26  # 80 units of quota, 3 per lead
    assert_invariants()


@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
def test_an_event_from_one_process_reaches_a_dashboard_on_another(
    seeded_tx, asgi_server_factory, staff_user, redis_url
):
    watched = asgi_server_factory(REDIS_URL=redis_url)
    other = asgi_server_factory(REDIS_URL=redis_url)
    _, key = create_api_key(name="fan-out")
    stream = _open_stream(watched.url, _session_cookie(staff_user))
    try:
        assert b"event: stream-open" in _read_until(stream, b"event: stream-open", seconds=30)

        answer = httpx.post(
            other.url + "/api/leads",
            json={"name": "Ada", "phone": "+15550100100", "city": "Paris", "service": 1},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        lead_id = answer.json()["id"]
        # Generous, for a loaded machine: SPEC §6's second is the browser test's to hold. Under
        # the 20 s keep-alive, so an event left to the keep-alive fails here: it once did,
        # when the lead committed between the stream's own first read and the hub's.
        received = _read_until(stream, f'"lead_id": {lead_id}'.encode(), seconds=15)
    finally:
        stream.close()

    assert answer.status_code == 201
    assert b"event: lead.allocated" in received, (watched.output(), other.output())
    assert f'"lead_id": {lead_id}'.encode() in received


PRODUCTION = {
    "SECRET_KEY": "test-secret-key-for-the-launcher-only-0123456789abcdef",
    "WEBHOOK_SECRET": "whsec_" + base64.b64encode(b"launcher-test-secret-32-bytes-ok").decode(),
    "DELIVERY_SECRET_KEYS": base64.urlsafe_b64encode(b"launcher-test-delivery-key-32-b!").decode(),
    "ALLOWED_HOSTS": "127.0.0.1",
    "SECURE_SSL_REDIRECT": "false",
}


def launch(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DEBUG")}
    return subprocess.run(
        [sys.executable, "-m", "leaddist.serve", "--port", str(free_port()), *args],
        cwd=settings.BASE_DIR,
        env=environment | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("missing", ["SECRET_KEY", "WEBHOOK_SECRET", "DELIVERY_SECRET_KEYS"])
def test_the_launcher_refuses_to_start_without_a_production_secret(missing):
    result = launch("--workers", "1", **(PRODUCTION | {missing: ""}))

    assert result.returncode == 2
    assert f"Refusing to start: {missing} must be set when DEBUG is off" in result.stderr


def test_several_workers_refuse_to_start_without_redis():
    result = launch("--workers", "2", **PRODUCTION)

    assert result.returncode == 2
    assert "Several workers need REDIS_URL" in result.stderr


def test_the_launcher_runs_debug_off_even_when_the_environment_says_on():
    # DEBUG on would let the app start without its secrets: the launcher turns it off first.
    result = launch("--workers", "1", DEBUG="true", SECRET_KEY="", WEBHOOK_SECRET="")

    assert result.returncode == 2
    assert "must be set when DEBUG is off" in result.stderr


@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
def test_the_launcher_serves_production_with_one_worker_per_core_and_a_background_worker(
    seeded_tx, tmp_path, redis_url, jobs
):
    """The production configuration end to end: DEBUG off, prepared statements, uvicorn, and
    a background worker that runs the queued jobs; SIGTERM stops every process."""
    _, key = create_api_key(name="production")
    # A lead left waiting with capacity back and a drain queued: the background worker's job.
    Provider.objects.filter(pk__in=[2, 3, 4]).update(status="paused")
    waiting = submit_lead(LeadInput(service_id=1, name="Ada", phone="+15550209999", city="X"))
    Provider.objects.update(status="active")  # an update() sends no capacity_added
    drain_waiting_leads.defer()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("WEB_CONCURRENCY", "DEBUG")}
    env |= PRODUCTION | {"REDIS_URL": redis_url, "PORT": str(port)}
    env["DATABASE_URL"] = database_url_for_tests(f"leaddist-test-serve-{port}")
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "leaddist.serve"],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            health = None
            deadline = time.monotonic() + 60  # generous: a loaded machine starts slowly
            while health is None and time.monotonic() < deadline:
                try:
                    health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                except httpx.HTTPError:
                    time.sleep(0.2)
            cores = os.cpu_count() or 1
            expected_workers = cores if cores > 1 else 0
            workers = web_workers(process.pid)
            while len(workers) < expected_workers and time.monotonic() < deadline:
                time.sleep(0.2)  # the first worker may answer before the others are up
                workers = web_workers(process.pid)
            background = [
                *children(process.pid, b"leaddist.background"),  # drains
                *children(process.pid, b"deliver_leads"),  # deliveries
            ]
            niceness = sorted(
                (b"deliver_leads" in Path(f"/proc/{pid}/cmdline").read_bytes(), nice_of(pid))
                for pid in background
            )
            leads = [
                httpx.post(
                    f"http://127.0.0.1:{port}/api/leads",
                    json={"name": "Ada", "phone": f"+1555010{n:04d}", "city": "X", "service": 3},
                    headers={"Authorization": f"Bearer {key}"},
                    timeout=30,
                )
                for n in range(5)  # past the prepare threshold: the statements run prepared
            ]
            while jobs.of("drain_waiting_leads")[0][0] != "succeeded":
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        finally:
            process.terminate()
            process.wait(timeout=40)
    left_running = [pid for pid in [*workers, *background] if os.path.exists(f"/proc/{pid}")]

    assert health is not None, log.read_text()
    assert health.status_code == 200, log.read_text()
    assert health.json()["status"] == "ok"
    # uvicorn's supervisor runs the web workers; with one core uvicorn serves in-process.
    assert len(workers) == expected_workers
    assert len(background) == 2  # one for drains, one for deliveries
    # The delivery worker yields the CPU to intake on a busy host (docs/PERFORMANCE.md).
    assert niceness == [(False, 0), (True, 10)]
    assert process.returncode == 0, log.read_text()
    assert left_running == []
    assert [lead.status_code for lead in leads] == [201] * 5, log.read_text()
    assert Lead.objects.get(pk=waiting.pk).status == "allocated"
    assert [[p["id"] for p in lead.json()["providers"]] for lead in leads] == [
        [1, 4, 2],
        [1, 4, 3],
        [1, 4, 5],
        [1, 4, 6],
        [1, 4, 7],
    ]
    assert_invariants()


def children(pid: int, marker: bytes) -> list[int]:
    """The pids of a process's children whose command line contains ``marker``, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid and marker in command:
            found.append(int(entry))
    return found


def web_workers(launcher: int) -> list[int]:
    """uvicorn's worker processes (multiprocessing's spawned children of its supervisor);
    helpers such as multiprocessing's resource tracker are left out."""
    return [
        pid for server in children(launcher, b"uvicorn") for pid in children(server, b"spawn_main")
    ]
