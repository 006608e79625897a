"""Delivery workers as production runs them: separate `manage.py deliver_leads` processes on
the test database. Killed mid-delivery, sharing a storm, sharing a provider's cap, and cut off
from the database again and again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone
from standardwebhooks import Webhook

from delivery.models import Attempt, Delivery, DeliveryWorker
from delivery.queue import LEASE_MARGIN_SECONDS
from delivery.tests.support import endpoint, submit, wait_until
from leaddist.tests.asgi_server import database_url_for_tests, wait_for_disconnect
from providers.models import Provider

pytestmark = pytest.mark.django_db(transaction=True)

NAME = f"leaddist-test-delivery-{os.getpid()}"


def start_worker(*, concurrency: int = 4, timeout: float = 30, env: dict[str, str] | None = None):
    environment = (
        os.environ
        | {
            "DATABASE_URL": database_url_for_tests(NAME),
            "ALLOW_PRIVATE_DELIVERY_TARGETS": "true",
            "DELIVERY_TIMEOUT_SECONDS": str(timeout),
            "DELIVERY_RETRY_BASE_SECONDS": "0",
            "DEBUG": "true",
        }
        | (env or {})
    )
    command = [sys.executable, "manage.py", "deliver_leads", "--concurrency", str(concurrency)]
    command += ["--poll", "0.05"]
    return subprocess.Popen(
        command, cwd=settings.BASE_DIR, env=environment, stderr=subprocess.DEVNULL
    )


@contextmanager
def delivery_workers(count: int, **options):
    """``count`` delivery worker processes (as `make worker` starts them), stopped on exit."""
    processes = [start_worker(**options) for _ in range(count)]
    try:
        yield processes
    finally:
        stop(processes)


def stop(processes) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        process.wait(timeout=40)
    wait_for_disconnect(NAME)


def delivered(count: int):
    return lambda: Delivery.objects.filter(status="delivered").count() == count


@pytest.mark.concurrency
def test_a_worker_killed_mid_delivery_is_replaced_and_only_its_attempt_sent_again(
    seeded_tx, receiver, local_targets
):
    """The launcher starts another worker a second after one dies: the new one finds its dead
    predecessor on this host and hands back its delivery at once, not when its claim runs out
    (the 30 s timeout plus the margin). It is sent again under the same webhook-id.

    "At once" is checked by cause, not by stopwatch (Django's start-up, which a loaded machine
    stretches, would count): the dead worker's row is made to look alive (a beat far ahead), so
    its silence can never give it away, and the request sent again still reached the receiver
    before the claim's own end."""
    receiver.script["/p1"] = [("hang", 20), 200]  # the first request never gets its answer
    secret = endpoint(1, url=receiver.url("/p1"))
    endpoint(2, url=receiver.url("/p2"))
    lead = submit(1, 1)
    delivery = Delivery.objects.get(lead=lead, provider_id=1)

    first = start_worker()
    try:
        wait_until(lambda: receiver.of("/p1"), seconds=30, what="the first request")
        # Recorded, not just received: an attempt sent but not yet recorded is in flight, and
        # is sent again after a kill by design.
        wait_until(
            lambda: Delivery.objects.filter(lead=lead, provider_id=2, status="delivered").exists(),
            seconds=30,
            what="provider 2's delivery recorded",
        )
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        held = Delivery.objects.get(pk=delivery.pk)
        assert held.worker_id is not None  # held by the dead
        claim_ends = held.next_attempt_at
        DeliveryWorker.objects.filter(pid=first.pid).update(
            beat_at=timezone.now() + timedelta(hours=1)
        )
        with delivery_workers(1):
            wait_until(delivered(2), seconds=60, what="both deliveries")
    finally:
        stop([first])

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("delivered", 1)  # the killed one never ended
    requests = receiver.of("/p1")
    assert len(requests) == 2
    assert requests[1].received_at < claim_ends  # handed back, not run out (45 s)
    assert {r.headers["webhook-id"] for r in requests} == {str(delivery.pk)}
    for request in requests:
        Webhook(secret).verify(request.body, request.headers)
    assert len(receiver.of("/p2")) == 1  # recorded before the kill: never sent again


@pytest.mark.concurrency
def test_a_killed_workers_deliveries_go_to_the_other_worker_within_seconds(
    seeded_tx, receiver, local_targets
):
    """Two workers share slow endpoints (1 s each); one is SIGKILLed. The other takes the dead
    one's deliveries once its heartbeat is DEAD_AFTER_SECONDS old (before their claims would
    have run out, 45 s after they were made), and what arrives twice is only what the dead one
    had in flight when it died."""
    Provider.objects.update(quota=1000, remaining_quota=1000)
    for pid in range(1, 9):
        endpoint(pid, url=receiver.url(f"/p{pid}"))
        receiver.script[f"/p{pid}"] = [("hang", 1)]
    leads = [submit(1 + n % 3, n) for n in range(30)]
    expected = 3 * len(leads)

    with delivery_workers(2, concurrency=8) as [doomed, survivor]:
        wait_until(
            lambda: DeliveryWorker.objects.count() == 2, seconds=30, what="both workers beating"
        )
        doomed_id = DeliveryWorker.objects.get(pid=doomed.pid).pk
        wait_until(
            lambda: Delivery.objects.filter(worker_id=doomed_id).exists(),
            seconds=30,
            what="the doomed worker holding deliveries",
        )
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait()
        # What it held as it died (counted before the kill, it could still claim more). The
        # survivor hands these back only once the dead one has been silent DEAD_AFTER_SECONDS.
        held = dict(
            Delivery.objects.filter(worker_id=doomed_id).values_list("pk", "next_attempt_at")
        )
        assert held
        wait_until(
            lambda: not Delivery.objects.filter(worker_id=doomed_id).exists(),
            seconds=60,
            what="the dead worker's deliveries handed back",
        )
        handed_back_by = timezone.now()
        wait_until(delivered(expected), seconds=120, what="every delivery")
        assert survivor.poll() is None

    # By the heartbeat, not by their claims running out.
    assert handed_back_by < min(held.values())
    ids = [r.headers["webhook-id"] for r in receiver.requests]
    twice = {i for i in ids if ids.count(i) > 1}
    assert len(set(ids)) == expected
    assert twice <= {str(pk) for pk in held}
    assert len(held) <= 8


@pytest.mark.concurrency
def test_two_workers_deliver_a_storm_of_200_leads_exactly_once_each(
    seeded_tx, receiver, local_targets
):
    Provider.objects.update(quota=1000, remaining_quota=1000)
    for pid in range(1, 9):
        endpoint(pid, url=receiver.url(f"/p{pid}"))
    receiver.script["/p4"] = [503, 200]  # one provider fails its first request, then recovers
    leads = [submit(1 + n % 3, n) for n in range(200)]
    expected = 3 * len(leads)

    started = time.monotonic()
    with delivery_workers(2, concurrency=10):
        wait_until(delivered(expected), seconds=240, what="every delivery")
    elapsed = time.monotonic() - started

    assert Delivery.objects.count() == expected  # one per (lead, provider)
    ids = [r.headers["webhook-id"] for r in receiver.requests if r.path != "/p4"]
    assert len(ids) == len(set(ids))  # nothing sent twice
    p4 = Delivery.objects.filter(provider_id=4)
    assert len(receiver.of("/p4")) == p4.count() + 1
    print(f"\n{expected} deliveries by 2 worker processes in {elapsed:.1f} s")


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most (start, end) intervals that overlap at any moment."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = current = 0
    for _, change in edges:  # at a tie, an end (-1) sorts before a start
        current += change
        most = max(most, current)
    return most


@pytest.mark.concurrency
def test_two_workers_together_hold_no_more_than_a_providers_cap(seeded_tx, receiver, local_targets):
    """DELIVERY_PER_PROVIDER_CONCURRENCY is 2 across both workers, not 2 in each: provider 1's
    slow endpoint never has more than 2 requests at once, by the receiver's count and by the
    attempts log, though the workers have 8 places between them."""
    Provider.objects.update(quota=1000, remaining_quota=1000)
    receiver.script["/p1"] = [("hang", 1)]
    endpoint(1, url=receiver.url("/p1"))
    leads = [submit(1, n) for n in range(8)]  # provider 1 is service 1's mandatory provider
    assert Delivery.objects.filter(provider_id=1).count() == len(leads)

    cap = {"DELIVERY_PER_PROVIDER_CONCURRENCY": "2"}
    with delivery_workers(2, concurrency=4, timeout=3, env=cap):
        wait_until(delivered(len(leads)), seconds=120, what="every delivery")

    assert receiver.peak["/p1"] == 2
    attempts = Attempt.objects.filter(delivery__provider_id=1)
    assert attempts.count() == len(leads)  # waiting for a place is not an attempt
    intervals = [
        (a.started_at.timestamp(), a.started_at.timestamp() + a.latency_ms / 1000) for a in attempts
    ]
    assert most_at_once(intervals) <= 2
    assert not Delivery.objects.filter(worker_id__isnull=False).exists()


def terminate_backends() -> int:
    """pg_terminate_backend every other session on the test database (a failover does this)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


@pytest.mark.concurrency
def test_a_worker_cut_off_from_the_database_again_and_again_stays_up_and_delivers_all(
    seeded_tx, receiver, local_targets
):
    """Issue 20: the worker's connections are terminated five times during a burst. It
    reconnects each time (its claims and records retried on a fresh connection), never exits,
    and every delivery arrives, each once, within seconds of the last kill."""
    Provider.objects.update(quota=1000, remaining_quota=1000)
    for pid in range(1, 9):
        endpoint(pid, url=receiver.url(f"/p{pid}"))
    leads = [submit(1 + n % 3, n) for n in range(60)]
    expected = 3 * len(leads)

    with delivery_workers(1, concurrency=8) as [worker]:
        wait_until(lambda: receiver.requests, seconds=30, what="the first delivery")
        for _ in range(5):
            assert terminate_backends() >= 1
            time.sleep(0.3)
        last_kill = time.monotonic()
        wait_until(delivered(expected), seconds=60, what="every delivery")
        after_last_kill = time.monotonic() - last_kill
        assert worker.poll() is None  # still running

    # Claims lost with a connection were handed back by the worker itself, not left to run out
    # (the 30 s timeout plus LEASE_MARGIN_SECONDS).
    assert after_last_kill < 30 + LEASE_MARGIN_SECONDS
    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert len(set(ids)) == expected
