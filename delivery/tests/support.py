"""Helpers shared by the delivery tests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

from asgiref.sync import async_to_sync
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from allocation.services import LeadInput, submit_lead
from delivery.attempts import Record, attempt, record_attempts
from delivery.endpoints import set_endpoint
from delivery.models import Delivery, Endpoint
from delivery.queue import claim, register_worker
from delivery.sending import close_clients
from delivery.worker import Worker
from providers.models import Provider

# One snapshot for every read of the transaction; SET TRANSACTION must be its first statement.
SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"


def lead_input(service_id: int, n: int) -> LeadInput:
    return LeadInput(service_id=service_id, name="Ada", phone=f"+1555{n:07d}", city="Paris")


def submit(service_id: int, n: int):
    return submit_lead(lead_input(service_id, n))


def endpoint(provider_id: int, *, url: str = "", email: str = "") -> str:
    """Give the provider an endpoint (settings must allow the URL); return its clear secret."""
    change = set_endpoint(Provider.objects.get(pk=provider_id), url=url, email=email)
    return change.endpoint.signing_secret if change.endpoint else ""


def plain_endpoint(provider_id: int, **fields: str) -> Endpoint:
    """An endpoint row written directly, past the SSRF guard (for tests that send nothing)."""
    endpoint = Endpoint(provider_id=provider_id, **fields)
    if endpoint.url and not endpoint.secret:
        endpoint.set_secret(Endpoint.generate_secret())
    endpoint.save(force_insert=True)
    return endpoint


def wait_until(condition: Callable[[], object], *, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@contextmanager
def running_worker(*, concurrency: int = 4, poll: float = 0.02) -> Iterator[Worker]:
    """A delivery worker (delivery.worker.Worker, as `manage.py deliver_leads` runs it) on an
    event loop of its own in a thread, for the block; stopped as SIGTERM stops it."""
    worker = Worker(concurrency=concurrency, poll_seconds=poll)
    started = threading.Event()
    loop_box: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
    failure: list[BaseException] = []

    async def main() -> None:
        stop = asyncio.Event()
        loop_box.append((asyncio.get_running_loop(), stop))
        started.set()
        await worker.run(stop, grace_seconds=10)

    def thread() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to the test below
            failure.append(exc)
            started.set()

    runner = threading.Thread(target=thread, daemon=True)
    runner.start()
    started.wait(10)
    try:
        yield worker
    finally:
        if loop_box:
            loop, stop = loop_box[0]
            loop.call_soon_threadsafe(stop.set)
        runner.join(30)
    assert not failure, failure


def nothing_due() -> bool:
    """No delivery in flight or held back for a place, and none due now (retries scheduled
    later do not count; a held-back one is due work that its provider's cap put back until a
    place frees).

    "Now" is read after the snapshot is taken: a worker stamps a retry due at its own
    ``timezone.now()``, read before it commits, so every row the snapshot holds was stamped
    before this clock reading. Read before the query (as it once was), the clock could precede
    a retry recorded while the query began: due for the worker, still ahead for this check. On
    a busy machine, whose threads stall between the two, deliver_due then stopped the worker
    before that retry was made.
    """
    deliveries = Delivery.objects.open()
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(SNAPSHOT)
        # The transaction's first query takes its snapshot.
        if deliveries.filter(Q(worker_id__isnull=False) | Q(held_back=True)).exists():
            return False
        now = timezone.now()
        return not deliveries.filter(next_attempt_at__lte=now).exists()


def deliver_due(*, seconds: float = 30, concurrency: int = 4) -> None:
    """Run a worker until nothing is due or in flight, as a worker that runs on would have."""
    with running_worker(concurrency=concurrency):
        wait_until(nothing_due, seconds=seconds, what="every due delivery")


def attempt_now(delivery_id: int) -> str:
    """Make one attempt of the delivery now, as a worker would (claim, send, record); return its
    status afterwards."""
    worker = register_worker()
    Delivery.objects.filter(pk=delivery_id).update(next_attempt_at=timezone.now())
    Delivery.objects.exclude(pk=delivery_id).filter(worker_id__isnull=True).update(
        next_attempt_at=timezone.now() + timedelta(hours=1)
    )
    [send] = claim(worker, take=1).sends
    assert send.delivery_id == delivery_id

    async def attempt_and_close() -> Record:
        try:
            return await attempt(send)
        finally:
            await close_clients()

    record = async_to_sync(attempt_and_close)()
    return record_attempts([record], worker_id=worker)[delivery_id]
