"""Provider slots (the global per-provider cap) and postpones: leases taken by racing threads on
their own connections, released, run out; a job that finds every slot leased comes back later
each time."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.utils import timezone

from delivery import services as delivery_services
from delivery.models import Attempt, Delivery, ProviderSlot
from delivery.services import (
    Lease,
    acquire_slot,
    attempt_delivery,
    postpone,
    postpone_wait,
    release_slot,
)
from delivery.tests.support import plain_endpoint, queued, submit


def acquire_at_once(count: int, *, provider_id: int) -> list[Lease | None]:
    """``count`` threads, each on its own database connection (as many workers would be), ask
    for a slot of the provider at the same moment."""
    barrier = threading.Barrier(count)
    results: list[Lease | None] = [None] * count

    def acquire(n: int) -> None:
        try:
            barrier.wait()
            results[n] = acquire_slot(provider_id, delivery_id=1000 + n)
        finally:
            connection.close()

    threads = [threading.Thread(target=acquire, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.concurrency
def test_racing_workers_never_lease_more_than_the_providers_slots(seeded_tx, settings):
    """The first race also creates the slot rows; the second finds them all free again."""
    settings.DELIVERY_PER_PROVIDER_CONCURRENCY = 4

    for _ in range(2):
        leases = [lease for lease in acquire_at_once(16, provider_id=1) if lease is not None]

        assert sorted(lease.slot for lease in leases) == [0, 1, 2, 3]
        held = ProviderSlot.objects.leased().filter(provider_id=1)
        assert sorted(held.values_list("delivery_id", flat=True)) == sorted(
            lease.delivery_id for lease in leases
        )
        for lease in leases:
            release_slot(lease)
        assert not ProviderSlot.objects.leased().exists()

    assert ProviderSlot.objects.filter(provider_id=1).count() == 4  # created once


def test_another_providers_slots_are_its_own(seeded_tx, settings):
    settings.DELIVERY_PER_PROVIDER_CONCURRENCY = 1
    acquire_slot(1, delivery_id=1)

    lease = acquire_slot(2, delivery_id=2)

    assert lease is not None
    assert acquire_slot(1, delivery_id=3) is None


def test_a_released_slot_goes_to_the_next_attempt(seeded_tx, settings):
    settings.DELIVERY_PER_PROVIDER_CONCURRENCY = 1
    first = acquire_slot(1, delivery_id=1)
    assert acquire_slot(1, delivery_id=2) is None

    release_slot(first)

    second = acquire_slot(1, delivery_id=2)
    assert second is not None
    assert second.slot == first.slot
    assert list(ProviderSlot.objects.leased().values_list("delivery_id", flat=True)) == [2]


def test_a_lease_that_ran_out_is_taken_again_and_its_late_release_frees_nothing(
    seeded_tx, settings
):
    """A worker killed mid-attempt never releases its slot: the lease runs out instead. If the
    holder was only slow, its release afterwards must not free the slot's new holder."""
    settings.DELIVERY_PER_PROVIDER_CONCURRENCY = 1
    killed = acquire_slot(1, delivery_id=1)
    now = timezone.now()
    lease_seconds = settings.DELIVERY_TIMEOUT_SECONDS + 30
    assert now < killed.until < now + timedelta(seconds=lease_seconds + 1)
    assert acquire_slot(1, delivery_id=2) is None
    ProviderSlot.objects.filter(provider_id=1).update(leased_until=now - timedelta(seconds=1))

    taken = acquire_slot(1, delivery_id=2)
    release_slot(killed)

    assert taken is not None
    assert taken.slot == killed.slot
    assert list(ProviderSlot.objects.leased().values_list("delivery_id", flat=True)) == [2]


def test_a_lowered_setting_leaves_the_slots_above_it_unused(seeded_tx, settings):
    settings.DELIVERY_PER_PROVIDER_CONCURRENCY = 3
    for n in range(3):
        release_slot(acquire_slot(1, delivery_id=n))
    settings.DELIVERY_PER_PROVIDER_CONCURRENCY = 1

    leases = [acquire_slot(1, delivery_id=10), acquire_slot(1, delivery_id=11)]

    assert leases[0].slot == 0
    assert leases[1] is None


def test_postpone_waits_double_with_each_postpone_up_to_8_timeouts_half_of_it_random(settings):
    settings.DELIVERY_TIMEOUT_SECONDS = 10

    waits = {n: [postpone_wait(n) for _ in range(200)] for n in range(6)}

    for n, nominal in {0: 10, 1: 20, 2: 40, 3: 80, 4: 80, 5: 80}.items():
        assert nominal / 2 <= min(waits[n])
        assert max(waits[n]) <= nominal
        assert max(waits[n]) - min(waits[n]) > nominal / 10  # jittered, not fixed
    # A busy provider (attempts of milliseconds) is asked again after 1 s, 2, 4, 8 at most.
    busy = {n: [postpone_wait(n, busy=True) for _ in range(200)] for n in (0, 3, 5)}
    for n, nominal in {0: 1, 3: 8, 5: 8}.items():
        assert nominal / 2 <= min(busy[n]) <= max(busy[n]) <= nominal


def test_a_job_finding_every_slot_leased_comes_back_later_uncounted(
    jobs, seeded_tx, settings, receiver, local_targets
):
    local_targets.DELIVERY_PER_PROVIDER_CONCURRENCY = 1
    plain_endpoint(1, url=receiver.url("/p1"))
    delivery = Delivery.objects.get(lead=submit(1, 1))
    jobs.clear()
    acquire_slot(1, delivery_id=0)  # another attempt holds provider 1's only slot
    run = async_to_sync(attempt_delivery)
    before = timezone.now()

    statuses = [run(delivery.pk, generation=0, attempt=0, postponed=n) for n in (0, 3)]

    assert statuses == ["postponed", "postponed"]
    assert [args for _, args in queued()] == [
        {"delivery_id": delivery.pk, "generation": 0, "attempt": 0, "postponed": 1},
        {"delivery_id": delivery.pk, "generation": 0, "attempt": 0, "postponed": 4},
    ]
    with connection.cursor() as cursor:
        cursor.execute("SELECT scheduled_at FROM procrastinate_jobs ORDER BY id")
        first, fourth = (row[0] for row in cursor.fetchall())
    # The slot's holder started just now: the provider is busy, not stuck, and the job comes
    # back after BUSY_POSTPONE_SECONDS (1 s) times 1, then 8, half of it random.
    base = timedelta(seconds=delivery_services.BUSY_POSTPONE_SECONDS)
    assert before + base * 0.5 <= first <= timezone.now() + base
    assert before + base * 8 * 0.5 <= fourth <= timezone.now() + base * 8
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("pending", 0)
    assert delivery.next_attempt_at == fourth  # the admin and resume_stuck see when it is due
    assert not Attempt.objects.exists()
    assert not receiver.requests


def test_a_job_finding_a_busy_providers_slots_leased_takes_the_first_to_free_up(
    jobs, seeded_tx, receiver, local_targets
):
    """The other attempt ends 0.1 s later (a provider answering quickly): this one is sent in
    that slot then, not postponed for seconds."""
    local_targets.DELIVERY_PER_PROVIDER_CONCURRENCY = 1
    plain_endpoint(1, url=receiver.url("/p1"))
    delivery = Delivery.objects.get(lead=submit(1, 1))
    jobs.clear()
    other = acquire_slot(1, delivery_id=0)

    def other_attempt_ends() -> None:
        try:
            release_slot(other)
        finally:
            connection.close()

    timer = threading.Timer(0.1, other_attempt_ends)
    timer.start()
    try:
        status = async_to_sync(attempt_delivery)(delivery.pk, generation=0, attempt=0)
    finally:
        timer.join()

    assert status == "delivered"
    assert queued() == []  # not postponed
    assert len(receiver.of("/p1")) == 1


def test_a_job_finding_a_stuck_providers_slots_leased_is_postponed_without_waiting(
    jobs, seeded_tx, receiver, local_targets, monkeypatch
):
    """The attempt holding the one slot started 5 s ago (the provider hangs): waiting would
    only hold this worker's slot, so the job is postponed after its one try for a slot."""
    local_targets.DELIVERY_PER_PROVIDER_CONCURRENCY = 1
    plain_endpoint(1, url=receiver.url("/p1"))
    delivery = Delivery.objects.get(lead=submit(1, 1))
    jobs.clear()
    acquire_slot(1, delivery_id=0)
    ProviderSlot.objects.filter(provider_id=1).update(
        leased_until=timezone.now() + timedelta(seconds=local_targets.DELIVERY_TIMEOUT_SECONDS + 25)
    )
    tries = []
    real_acquire = delivery_services.acquire_slot

    def counted(*args, **kwargs):
        tries.append(args)
        return real_acquire(*args, **kwargs)

    monkeypatch.setattr(delivery_services, "acquire_slot", counted)

    before = timezone.now()
    status = async_to_sync(attempt_delivery)(delivery.pk, generation=0, attempt=0)

    assert status == "postponed"
    assert tries == []  # no asking again: start_attempt's one lease statement was all
    assert [args["postponed"] for _, args in queued()] == [1]
    # Stuck, not busy: it comes back after the attempt timeout (2 s here), half of it random.
    delivery.refresh_from_db()
    timeout = timedelta(seconds=local_targets.DELIVERY_TIMEOUT_SECONDS)
    assert delivery.next_attempt_at >= before + timeout * 0.5
    assert not receiver.requests


def test_a_postponed_job_whose_delivery_moved_on_is_not_deferred_again(
    jobs, seeded_tx, settings, local_targets
):
    local_targets.DELIVERY_PER_PROVIDER_CONCURRENCY = 1
    plain_endpoint(1, url="https://p1.example/hook")
    delivery = Delivery.objects.get(lead=submit(1, 1))
    jobs.clear()
    acquire_slot(1, delivery_id=0)
    Delivery.objects.filter(pk=delivery.pk).update(generation=1)  # resent meanwhile

    postpone(delivery.pk, generation=0, attempt=0, postponed=0)

    assert queued() == []


def test_an_attempt_frees_its_slot_when_recorded(jobs, seeded_tx, receiver, local_targets):
    local_targets.DELIVERY_PER_PROVIDER_CONCURRENCY = 1
    local_targets.DELIVERY_RETRY_BASE_SECONDS = 60
    receiver.script["/p1"] = [500]
    plain_endpoint(1, url=receiver.url("/p1"))
    deliveries = [Delivery.objects.get(lead=submit(1, n)) for n in (1, 2)]
    run = async_to_sync(attempt_delivery)

    statuses = [run(d.pk, generation=0, attempt=0) for d in deliveries]

    assert statuses == ["retrying", "retrying"]  # one after the other in the one slot
    assert not ProviderSlot.objects.leased().exists()
    assert list(ProviderSlot.objects.values_list("delivery_id", flat=True)) == [deliveries[1].pk]


def test_an_attempt_that_breaks_before_it_is_recorded_frees_its_slot(
    seeded_tx, local_targets, monkeypatch
):
    async def broken(*args, **kwargs):
        raise RuntimeError("a bug in sending")

    monkeypatch.setattr("delivery.sending.post_webhook", broken)
    plain_endpoint(1, url="https://p1.example/hook")
    delivery = Delivery.objects.get(lead=submit(1, 1))

    with pytest.raises(RuntimeError):
        async_to_sync(attempt_delivery)(delivery.pk, generation=0, attempt=0)

    assert ProviderSlot.objects.filter(provider_id=1).exists()
    assert not ProviderSlot.objects.leased().exists()
