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

from delivery.models import Delivery
from delivery.tests.support import endpoint, submit
from leaddist.tests.asgi_server import database_url_for_tests, wait_for_disconnect
from providers.models import Provider

pytestmark = pytest.mark.django_db(transaction=True)


@contextmanager
def delivery_workers(count: int, *, concurrency: int = 4, timeout: float = 30):
    """``count`` delivery worker processes (as `make worker` starts them), stopped on exit."""
    name = f"leaddist-test-delivery-{os.getpid()}"
    env = os.environ | {
        "DATABASE_URL": database_url_for_tests(name),
        "ALLOW_PRIVATE_DELIVERY_TARGETS": "true",
        "DELIVERY_TIMEOUT_SECONDS": str(timeout),
        "DELIVERY_RETRY_BASE_SECONDS": "0",
        "DEBUG": "true",
    }
    command = [sys.executable, "manage.py", "procrastinate", "worker", "--queues", "deliveries"]
    command += ["--concurrency", str(concurrency), "--fetch-job-polling-interval", "0.2"]
    processes = [
        subprocess.Popen(command, cwd=settings.BASE_DIR, env=env, stderr=subprocess.DEVNULL)
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
