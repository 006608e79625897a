"""Faults without casualties, over real HTTP against real servers, invariants read afterwards.

- PostgreSQL terminates the server's connections in the middle of a burst: no 500, and no
  stored lead is answered with an error (a lead answered 503 was not stored).
- The server is killed with SIGKILL in the middle of a burst, then started again: the requests
  that got no answer are sent again and answer 201 or 409, never a second lead.
- Redis stops under two workers and comes back: intake answers every lead and tries Redis at
  most once (the breaker skips it after), live events keep reaching every worker's
  dashboards, and the Redis listeners reconnect by themselves.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import psycopg
import pytest
from django.contrib.auth import get_user_model

from allocation.models import Lead
from allocation.tests.test_concurrency import assert_invariants
from credentials.services import create_api_key
from dashboard.tests.test_sse import _open_stream, _read_until, _session_cookie
from leaddist.tests.asgi_server import database_url_for_tests, free_port, run_server
from leaddist.tests.test_metrics import TOKEN, Samples, parse

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.concurrency]


def lead_body(n: int) -> dict:
    return {"name": "Ada", "phone": f"+1555040{n:04d}", "city": "Paris", "service": n % 3 + 1}


def post(url: str, key: str, n: int) -> int | str:
    """The status of POST /api/leads, or the name of the transport error."""
    try:
        answer = httpx.post(
            url + "/api/leads",
            json=lead_body(n),
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return answer.status_code


def stored_phones() -> set[str]:
    return set(Lead.objects.values_list("phone", flat=True))


def phone(n: int) -> str:
    return lead_body(n)["phone"].replace(" ", "")


def terminate_server_backends(server_url: str) -> int:
    """Terminate every PostgreSQL backend the server under test has open."""
    port = server_url.rsplit(":", 1)[1]
    return terminate_backends(f"leaddist-test-server-{port}")


def terminate_backends(application_name: str) -> int:
    """Terminate every PostgreSQL backend of this application name, and wait (up to 5 s each)
    until each has ended: its session is over, and its client was told."""
    killer = database_url_for_tests("leaddist-test-killer")
    with psycopg.connect(killer, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE application_name = %s",
            [application_name],
        ).fetchall()
    return len(rows)


def test_connections_terminated_mid_burst_never_answer_a_stored_lead_with_an_error(
    seeded_tx, asgi_server_factory
):
    _, key = create_api_key(name="burst")
    server = asgi_server_factory(RATE_LIMIT_PER_KEY="0")
    # Three kills spread over the burst by how many requests were answered, not by the clock:
    # each lands mid-burst, after the server has reconnected from the one before, however slow
    # the machine.
    kill_after = {20: threading.Event(), 80: threading.Event(), 140: threading.Event()}
    results: dict[int, int | str] = {}
    killed = []

    def send(n: int) -> None:
        results[n] = post(server.url, key, n)
        for answered, due in kill_after.items():
            if len(results) >= answered:
                due.set()

    def killer() -> None:
        for due in kill_after.values():
            assert due.wait(60)
            killed.append(terminate_server_backends(server.url))

    kills = threading.Thread(target=killer)
    kills.start()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(send, range(240)))
    kills.join()

    statuses = Counter(results.values())
    stored = stored_phones()
    assert sum(killed) >= 3, killed
    assert 500 not in statuses, (statuses, server.output())
    assert set(statuses) <= {201, 202, 503}, statuses
    for n, status in results.items():
        assert (status in (201, 202)) == (phone(n) in stored), (n, status)
    assert_invariants()


def fill_the_pool(url: str, key: str) -> None:
    """Concurrent reads, so that the server's pool holds several connections, as a busy
    server's does: after a kill, each is a dead one waiting to be lent."""
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda _: api_get(url, key, "/api/leads"), range(12)))


def api_get(url: str, key: str, path: str) -> httpx.Response:
    return httpx.get(url + path, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_health_and_first_requests_answer_normally_right_after_the_connections_are_killed(
    seeded_tx, asgi_server_factory
):
    _, key = create_api_key(name="drill")
    server = asgi_server_factory(RATE_LIMIT_PER_KEY="0")
    first_calls = {
        "GET /api/leads": lambda: api_get(server.url, key, "/api/leads"),
        "GET /api/providers": lambda: api_get(server.url, key, "/api/providers"),
        "POST /api/leads": lambda: httpx.post(
            server.url + "/api/leads",
            json=lead_body(1),
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        ),
    }

    fill_the_pool(server.url, key)
    killed = terminate_server_backends(server.url)
    health = [httpx.get(server.url + "/healthz", timeout=10) for _ in range(8)]
    first: dict[str, httpx.Response] = {}
    for name, call in first_calls.items():
        fill_the_pool(server.url, key)
        terminate_server_backends(server.url)
        first[name] = call()

    assert killed >= 2, killed
    assert [(r.status_code, r.json()["database"]) for r in health] == [(200, "ok")] * 8, (
        [r.text for r in health],
        server.output(),
    )
    assert {name: r.status_code for name, r in first.items()} == {
        "GET /api/leads": 200,
        "GET /api/providers": 200,
        "POST /api/leads": 201,
    }, ({name: r.text for name, r in first.items()}, server.output())


def test_a_server_killed_mid_burst_loses_nothing_and_a_resend_makes_no_second_lead(
    seeded_tx, tmp_path
):
    _, key = create_api_key(name="burst")
    results: dict[int, int | str] = {}
    halfway = threading.Event()
    with run_server(tmp_path / "first.log", workers=2, RATE_LIMIT_PER_KEY="0") as first:

        def send(n: int) -> None:
            results[n] = post(first.url, key, n)
            if len(results) >= 60:  # not ==: two threads may both see 61
                halfway.set()

        def kill() -> None:
            assert halfway.wait(60)
            os.killpg(first.process.pid, signal.SIGKILL)

        killing = threading.Thread(target=kill)
        killing.start()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(send, range(200)))
        killing.join()

    unanswered = [n for n, status in results.items() if status not in (201, 202)]
    with run_server(tmp_path / "second.log", RATE_LIMIT_PER_KEY="0") as second:
        resent = {n: post(second.url, key, n) for n in unanswered}

    assert unanswered, "the kill came too late to cut any request off"
    assert set(resent.values()) <= {201, 202, 409}, resent
    assert Lead.objects.count() == len(stored_phones()) == 200
    assert_invariants()


@pytest.fixture
def own_redis(tmp_path):
    """A Redis server of this test's own, which the test may stop and start again."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("REQUIRE_REDIS") == "1":
            pytest.fail("REQUIRE_REDIS=1 but redis-server is not installed")
        pytest.skip("no redis-server binary")
    port = free_port()
    processes: list[subprocess.Popen] = []

    def start() -> None:
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(process)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return
            time.sleep(0.05)
        pytest.fail("redis-server did not start")

    def stop() -> None:
        processes[-1].terminate()
        processes[-1].wait(10)

    start()
    yield SimpleNamespace(url=f"redis://127.0.0.1:{port}/0", start=start, stop=stop)
    for process in processes:
        if process.poll() is None:
            process.kill()


def timed_posts(url: str, key: str, numbers: range) -> tuple[list[float], list[int]]:
    """Send leads one after another; their latencies and the ids of the stored ones."""
    latencies, ids = [], []
    for n in numbers:
        started = time.monotonic()
        answer = httpx.post(
            url + "/api/leads",
            json=lead_body(n),
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        latencies.append(time.monotonic() - started)
        assert answer.status_code in (201, 202), answer.text
        ids.append(answer.json()["id"])
    return latencies, ids


def wait_until_redis_is_back(url: str) -> None:
    """Until the server's health check reaches Redis. It asks even while the process's
    breaker is open, and its success closes the breaker, which the event publisher shares."""
    deadline = time.monotonic() + 30
    while httpx.get(url + "/healthz", timeout=10).json()["redis"] != "ok":
        assert time.monotonic() < deadline, "Redis is still unavailable after 30 s"
        time.sleep(0.1)


def publish_failures(url: str) -> Counter:
    """The server's live-event wake-ups that did not go through Redis, by reason."""
    answer = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    samples: Samples = parse(answer.text)
    return Counter(
        {
            dict(labels)["reason"]: count
            for (name, labels), count in samples.items()
            if name == "leaddist_event_publish_failures_total"
        }
    )


def test_redis_stopped_and_restarted_under_two_workers(
    seeded_tx, asgi_server_factory, own_redis, staff_user
):
    # Events reach another worker only through Redis here (no polling to fall back on), so
    # what arrives after the restart proves the listeners reconnected by themselves. The
    # breaker outlasts the outage (the health check closes it once Redis is back), so every
    # call to Redis during the outage after the first failure must be skipped.
    env = {
        "REDIS_URL": own_redis.url,
        "EVENT_POLL_SECONDS": "60",
        "REDIS_BREAKER_SECONDS": "600",
        "METRICS_TOKEN": TOKEN,
    }
    watched = asgi_server_factory(**env)
    other = asgi_server_factory(**env)
    _, key = create_api_key(name="outage")
    stream = _open_stream(watched.url, _session_cookie(staff_user))
    try:
        assert b"stream-open" in _read_until(stream, b"stream-open", seconds=30)
        timed_posts(other.url, key, range(1, 21))
        seen_before = _read_until(stream, b'"lead_id": ', seconds=30)

        failures_before = publish_failures(other.url)
        own_redis.stop()
        _, outage_ids = timed_posts(other.url, key, range(21, 41))
        failures_during = publish_failures(other.url) - failures_before
        health = httpx.get(other.url + "/healthz", timeout=5).json()

        own_redis.start()
        # The first lead after the restart, once the publisher's breaker lets it try again.
        wait_until_redis_is_back(other.url)
        _, (after_id,) = timed_posts(other.url, key, range(41, 42))
        seen_after = _read_until(stream, f'"lead_id": {after_id}'.encode(), seconds=30)
    finally:
        stream.close()

    assert b"lead.allocated" in seen_before or b"lead.waiting" in seen_before
    assert health["status"] == "ok"
    assert health["redis"] == "unavailable"
    # Intake answered every lead with Redis gone, and did not wait on it: of the outage's
    # wake-ups at most one tried Redis (and failed, within REDIS_TIMEOUT_SECONDS); the breaker
    # skipped the rest at once. Counted by the server, so load cannot move it.
    assert failures_during["redis_error"] <= 1, failures_during
    assert failures_during["redis_error"] + failures_during["breaker_open"] >= 1, failures_during
    # Live events resumed on the other worker, and it caught up on the outage's events.
    assert f'"lead_id": {after_id}'.encode() in seen_after, (watched.output(), other.output())
    assert all(
        f'"lead_id": {lead_id}'.encode() in seen_before + seen_after for lead_id in outage_ids
    )


@pytest.fixture
def staff_user(transactional_db):
    return get_user_model().objects.create_user(username="watcher", password="x", is_staff=True)


def test_pooled_redis_connections_work_at_once_after_a_redis_restart(own_redis, settings):
    """Every pooled connection dies with the server; the next call on each still succeeds
    (one immediate retry on a fresh connection), for the sync and the asyncio client."""
    import asyncio

    from leaddist.http import redis_client

    settings.REDIS_URL = own_redis.url
    sync = redis_client.sync_client()

    async def main() -> list:
        client = redis_client.async_client()
        try:
            await asyncio.gather(*(client.ping() for _ in range(3)))  # three pooled connections
            await asyncio.gather(*(asyncio.to_thread(sync.ping) for _ in range(3)))
            own_redis.stop()
            own_redis.start()
            return [
                *await asyncio.gather(*(client.incr("restarted") for _ in range(3))),
                *[sync.incr("restarted") for _ in range(3)],
            ]
        finally:
            await client.aclose()

    assert sorted(asyncio.run(main())) == [1, 2, 3, 4, 5, 6]
