"""Delivery workers as production runs them: separate `manage.py procrastinate worker`
processes on the test database. One is killed mid-delivery; two share a storm."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from procrastinate.contrib.django import app
from standardwebhooks import Webhook

from delivery.models import Attempt, Delivery, ProviderSlot
from delivery.tests.support import endpoint, submit
from leaddist.tests.asgi_server import database_url_for_tests, wait_for_disconnect
from providers.models import Provider

pytestmark = pytest.mark.django_db(transaction=True)


@contextmanager
def delivery_workers(
    count: int, *, concurrency: int = 4, timeout: float = 30, env: dict[str, str] | None = None
):
    """``count`` delivery worker processes (as `make worker` starts them), stopped on exit;
    ``env``: more settings for them."""
    name = f"leaddist-test-delivery-{os.getpid()}"
    environment = (
        os.environ
        | {
            "DATABASE_URL": database_url_for_tests(name),
            "ALLOW_PRIVATE_DELIVERY_TARGETS": "true",
            "DELIVERY_TIMEOUT_SECONDS": str(timeout),
            "DELIVERY_RETRY_BASE_SECONDS": "0",
            "DEBUG": "true",
        }
        | (env or {})
    )
    command = [sys.executable, "manage.py", "procrastinate", "worker", "--queues", "deliveries"]
    command += ["--concurrency", str(concurrency), "--fetch-job-polling-interval", "0.2"]
    processes = [
        subprocess.Popen(command, cwd=settings.BASE_DIR, env=environment, stderr=subprocess.DEVNULL)
        for _ in range(count)
    ]
    try:
        yield processes
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            process.wait(timeout=40)
        wait_for_disconnect(name)


def wait_until(condition, *, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.concurrency
def test_a_worker_killed_mid_delivery_is_replaced_and_the_lead_delivered_under_the_same_id(
    jobs, seeded_tx, receiver, local_targets
):
    receiver.script["/p1"] = [("hang", 20), 200]  # the first request never gets its answer
    secret = endpoint(1, url=receiver.url("/p1"))
    delivery = Delivery.objects.get(lead=submit(1, 1))

    with delivery_workers(1) as [worker]:
        wait_until(lambda: receiver.of("/p1"), seconds=20, what="the first request")
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
    assert [status for status, _ in jobs.of("deliver_lead")] == ["doing"]  # orphaned
    # Its provider slot stays leased until the lease runs out; the provider's others are free.
    held = ProviderSlot.objects.leased().filter(provider_id=1)
    assert list(held.values_list("delivery_id", flat=True)) == [delivery.pk]
    # What the periodic retry_stalled_jobs does once the dead worker's heartbeat is old.
    stalled = []

    def found_stalled() -> bool:
        stalled[:] = async_to_sync(app.job_manager.get_stalled_jobs)(
            task_name="deliver_lead", seconds_since_heartbeat=1
        )
        return bool(stalled)

    wait_until(found_stalled, seconds=30, what="the orphaned job to count as stalled")
    for job in stalled:
        async_to_sync(app.job_manager.retry_job)(job)
    jobs.run()

    delivery.refresh_from_db()
    assert len(stalled) == 1
    assert (delivery.status, delivery.attempts) == ("delivered", 1)  # the killed one never ended
    requests = receiver.of("/p1")
    assert len(requests) == 2
    assert {r.headers["webhook-id"] for r in requests} == {str(delivery.pk)}
    for request in requests:
        Webhook(secret).verify(request.body, request.headers)


@pytest.mark.concurrency
def test_two_workers_deliver_a_storm_of_200_leads_exactly_once_each(
    jobs, seeded_tx, receiver, local_targets
):
    Provider.objects.update(quota=1000, remaining_quota=1000)
    for pid in range(1, 9):
        endpoint(pid, url=receiver.url(f"/p{pid}"))
    receiver.script["/p4"] = [503, 200]  # one provider fails its first request, then recovers
    leads = [submit(1 + n % 3, n) for n in range(200)]
    expected = 3 * len(leads)

    started = time.monotonic()
    with delivery_workers(2, concurrency=10):
        wait_until(
            lambda: Delivery.objects.filter(status="delivered").count() == expected,
            seconds=240,
            what="every delivery",
        )
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
def test_two_workers_together_hold_no_more_than_a_providers_slots(
    jobs, seeded_tx, receiver, local_targets
):
    """DELIVERY_PER_PROVIDER_CONCURRENCY is 2 across both workers, not 2 in each: provider 1's
    slow endpoint never has more than 2 requests at once, by the receiver's count and by the
    attempts log, though the workers have 8 attempt slots between them."""
    Provider.objects.update(quota=1000, remaining_quota=1000)
    receiver.script["/p1"] = [("hang", 1)]
    endpoint(1, url=receiver.url("/p1"))
    leads = [submit(1, n) for n in range(8)]  # provider 1 is service 1's mandatory provider
    assert Delivery.objects.filter(provider_id=1).count() == len(leads)

    settings = {"DELIVERY_PER_PROVIDER_CONCURRENCY": "2"}
    with delivery_workers(2, concurrency=4, timeout=3, env=settings):
        wait_until(
            lambda: Delivery.objects.filter(status="delivered").count() == len(leads),
            seconds=120,
            what="every delivery",
        )

    assert receiver.peak["/p1"] == 2
    attempts = Attempt.objects.filter(delivery__provider_id=1)
    assert attempts.count() == len(leads)  # postpones are not attempts
    intervals = [
        (a.started_at.timestamp(), a.started_at.timestamp() + a.latency_ms / 1000) for a in attempts
    ]
    assert most_at_once(intervals) <= 2
    assert not ProviderSlot.objects.leased().exists()  # every attempt freed its slot
