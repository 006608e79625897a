"""Intake first (delivery/pacing.py): delivery jobs wait while real leads arrive fast, at most
their hold, and not at all when intake is quiet."""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import contextmanager

import pytest
from django.db import connection

from allocation.models import Lead
from delivery.models import Attempt, Delivery
from delivery.pacing import IntakeGate, lead_sequence
from delivery.tests.support import endpoint, submit
from providers.models import Provider

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.concurrency]

# Low enough that leads submitted one after another in a thread count as a burst on a loaded
# CI machine (tens a second there, hundreds on a quiet one): one lead per reading (0.25 s).
BUSY_RATE = 2.0


@contextmanager
def intake_flood(seconds: float | None = None):
    """Leads submitted one after another in a thread, for ``seconds`` or until the block ends;
    yields a dict whose "stopped" is the time.time() the last one was stored."""
    stop = threading.Event()
    state: dict[str, float] = {}

    def submit_leads() -> None:
        n = 0
        until = time.time() + seconds if seconds is not None else float("inf")
        try:
            while not stop.is_set() and time.time() < until:
                n += 1
                submit(1 + n % 3, n)
            state["stopped"] = time.time()
        finally:
            connection.close()

    thread = threading.Thread(target=submit_leads)
    thread.start()
    try:
        time.sleep(0.5)  # the flood is under way before the job asks
        yield state
    finally:
        stop.set()
        thread.join()


def test_a_job_goes_at_once_when_intake_is_quiet(seeded_tx):
    gate = IntakeGate(busy_rate=BUSY_RATE, hold_seconds=30)

    async def jobs() -> list[float]:
        first = await gate.wait()  # two readings of the sequence, a quarter second apart
        await asyncio.sleep(0.3)
        return [first, await gate.wait()]  # one more reading

    first, second = asyncio.run(jobs())

    assert first < 0.5
    assert second < 0.1


def test_a_job_waits_while_leads_arrive_and_goes_once_they_stop(seeded_tx):
    gate = IntakeGate(busy_rate=BUSY_RATE, hold_seconds=30)
    before = Lead.objects.count()

    with intake_flood(seconds=2.5) as flood:
        waited = asyncio.run(gate.wait(time.time()))
        went = time.time()

    assert waited >= 1.5  # the flood's last 2 s
    # It went within a couple of readings of the last lead, not at the end of its hold.
    assert went - flood["stopped"] < 2.0
    assert Lead.objects.count() - before > 2 * BUSY_RATE  # the flood was one


def test_a_job_waits_no_longer_than_its_hold_however_busy_intake_is(seeded_tx):
    gate = IntakeGate(busy_rate=BUSY_RATE, hold_seconds=1.5)

    with intake_flood():
        waited = asyncio.run(gate.wait())
        # Due a hold ago already (a lead allocated early in a long burst): no wait at all.
        late = asyncio.run(gate.wait(time.time() - 1.5))

    assert 1.2 <= waited < 3.0
    assert late < 0.1


def test_the_wait_is_off_at_zero_and_reads_nothing(seeded_tx):
    gate = IntakeGate(busy_rate=BUSY_RATE, hold_seconds=0)

    with intake_flood():
        assert asyncio.run(gate.wait()) == 0.0
    assert gate._last is None  # the sequence was never read


def test_the_sequence_counts_every_new_lead(seeded_tx):
    before = lead_sequence()

    for n in range(3):
        submit(1, n)

    assert lead_sequence() - before == 3


def test_a_worker_delivers_a_burst_once_it_ends(jobs, seeded_tx, receiver, local_targets):
    """Through a real procrastinate worker: the lead's job carries its allocation time, the
    worker waits while the flood runs, and delivers every lead of it once it stops."""
    local_targets.DELIVERY_INTAKE_BUSY_RATE = BUSY_RATE
    local_targets.DELIVERY_INTAKE_FIRST_SECONDS = 30
    Provider.objects.update(quota=10_000, remaining_quota=10_000)
    endpoint(1, url=receiver.url("/p1"))  # service 1's mandatory provider
    first = submit(1, 0)

    with intake_flood(seconds=2.5) as flood:
        jobs.run()

    deliveries = Delivery.objects.filter(provider_id=1)
    assert deliveries.count() > 1  # the flood's service 1 leads too
    assert set(deliveries.values_list("status", flat=True)) == {"delivered"}
    assert deliveries.filter(lead=first).exists()
    earliest = min(Attempt.objects.values_list("started_at", flat=True))
    # Nothing went out while leads were arriving (readings are 0.25 s apart).
    assert earliest.timestamp() > flood["stopped"] - 0.5
    assert len(receiver.of("/p1")) == deliveries.count()
