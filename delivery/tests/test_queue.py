"""The delivery queue (delivery/queue.py): claims, each provider's cap across workers, and dead
workers' deliveries handed back."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from delivery import queue
from delivery.attempts import Record, record_attempts
from delivery.models import Delivery, DeliveryWorker
from delivery.queue import (
    claim,
    gone_on_this_host,
    queue_health,
    reap_dead_workers,
    register_worker,
    release_claims,
)
from delivery.sending import Outcome
from delivery.tests.support import plain_endpoint, submit
from providers.models import Provider


def deliveries_to(provider_ids: list[int], leads: int) -> None:
    for pid in provider_ids:
        plain_endpoint(pid, url=f"https://p{pid}.example/hook")
    Provider.objects.update(quota=1000, remaining_quota=1000)
    for n in range(leads):
        submit(1, n)


def in_flight(provider_id: int | None = None) -> int:
    rows = Delivery.objects.filter(worker_id__isnull=False, next_attempt_at__gt=timezone.now())
    if provider_id is not None:
        rows = rows.filter(provider_id=provider_id)
    return rows.count()


@pytest.mark.django_db
def test_a_claim_takes_the_oldest_due_first_with_what_to_send(seeded):
    deliveries_to([1, 2, 3], leads=2)
    worker = register_worker()
    oldest = list(Delivery.objects.order_by("next_attempt_at", "pk")[:2])

    taken = claim(worker, take=2)

    assert [s.delivery_id for s in taken.sends] == [d.pk for d in oldest]
    send = taken.sends[0]
    assert send.url == "https://p1.example/hook"
    assert send.secret.startswith("whsec_")
    assert b'"type":"lead.assigned"' in send.body
    assert b'"city":"Paris"' in send.body
    held = Delivery.objects.filter(worker_id=worker)
    assert sorted(held.values_list("pk", flat=True)) == sorted(d.pk for d in oldest)
    # Held until the attempt's timeout plus the margin, if the worker died unnoticed.
    lease = (held.first().next_attempt_at - timezone.now()).total_seconds()
    assert queue.lease_seconds() - 2 < lease <= queue.lease_seconds()


@pytest.mark.django_db
def test_deliveries_not_due_yet_are_not_claimed(seeded):
    deliveries_to([1], leads=1)
    Delivery.objects.update(next_attempt_at=timezone.now() + timedelta(minutes=1))

    assert claim(register_worker(), take=5).sends == []


@pytest.mark.django_db
def test_a_provider_at_its_cap_waits_and_the_others_are_taken(seeded, settings):
    settings.DELIVERY_PER_PROVIDER_CONCURRENCY = 2
    deliveries_to([1, 2, 3], leads=4)  # provider 1: 4 deliveries; 2 and 3: 3 each
    worker = register_worker()

    taken = claim(worker, take=20)

    assert sorted(s.provider_id for s in taken.sends) == [1, 1, 2, 2, 3, 3]
    assert taken.put_back == 4
    # A busy provider (its attempts all just started): its others come back within moments.
    waiting = Delivery.objects.filter(worker_id__isnull=True)
    assert waiting.count() == 4
    for delivery in waiting:
        assert (delivery.next_attempt_at - timezone.now()).total_seconds() < 0.1


@pytest.mark.django_db
def test_a_hanging_providers_deliveries_wait_until_its_oldest_attempt_times_out(seeded, settings):
    settings.DELIVERY_PER_PROVIDER_CONCURRENCY = 1
    settings.DELIVERY_TIMEOUT_SECONDS = 10
    deliveries_to([1], leads=2)
    worker = register_worker()
    claim(worker, take=1)
    # Its one attempt started 4 s ago and is still going: the endpoint hangs.
    Delivery.objects.filter(worker_id=worker).update(
        next_attempt_at=timezone.now() + timedelta(seconds=queue.lease_seconds() - 4)
    )
    Delivery.objects.filter(worker_id__isnull=True).update(next_attempt_at=timezone.now())

    taken = claim(worker, take=5)

    assert taken.sends == []
    assert taken.put_back == 1
    later = Delivery.objects.get(provider_id=1, worker_id__isnull=True)
    wait = (later.next_attempt_at - timezone.now()).total_seconds()
    assert 6 - 1 <= wait <= 6 + 2 * queue.BUSY_WAIT_SECONDS + 1  # its attempt ends in 6 s


@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
def test_racing_workers_never_hold_more_than_a_providers_cap(seeded_tx, settings):
    settings.DELIVERY_PER_PROVIDER_CONCURRENCY = 3
    deliveries_to([1, 2, 3, 4], leads=30)
    workers = [register_worker() for _ in range(6)]
    barrier = threading.Barrier(len(workers))
    taken: list[int] = []

    def race(worker: int) -> None:
        try:
            barrier.wait()
            for _ in range(5):
                taken.extend(s.delivery_id for s in claim(worker, take=4).sends)
        finally:
            connection.close()

    threads = [threading.Thread(target=race, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(taken) == len(set(taken))  # no delivery claimed twice
    for provider_id in (1, 2, 3, 4):
        assert in_flight(provider_id) == 3
    assert len(taken) == 12


@pytest.mark.django_db
def test_a_silent_workers_deliveries_go_back_to_the_queue(seeded):
    deliveries_to([1, 2], leads=1)
    silent, alive = register_worker(), register_worker()
    claim(silent, take=10)
    DeliveryWorker.objects.filter(pk=silent).update(
        beat_at=timezone.now() - timedelta(seconds=queue.DEAD_AFTER_SECONDS + 1)
    )
    assert queue_health().stranded == 2

    assert reap_dead_workers() == 2

    assert not DeliveryWorker.objects.filter(pk=silent).exists()
    assert DeliveryWorker.objects.filter(pk=alive).exists()
    for delivery in Delivery.objects.all():
        assert delivery.worker_id is None
        assert delivery.next_attempt_at <= timezone.now()
    assert sorted(s.provider_id for s in claim(alive, take=10).sends) == [1, 2]


@pytest.mark.django_db
def test_a_worker_whose_process_is_gone_from_this_host_is_dead_at_once(seeded):
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    me = register_worker()
    ghost = DeliveryWorker.objects.create(
        hostname=DeliveryWorker.objects.get(pk=me).hostname,
        pid=int(finished.stdout),
        started_at=timezone.now(),
        beat_at=timezone.now(),
    )
    living = DeliveryWorker.objects.create(
        hostname=ghost.hostname, pid=os.getppid(), started_at=timezone.now(), beat_at=timezone.now()
    )

    assert gone_on_this_host(me) == [ghost.pk]
    reap_dead_workers(gone=[ghost.pk])
    assert set(DeliveryWorker.objects.values_list("pk", flat=True)) == {me, living.pk}


@pytest.mark.django_db
def test_after_a_lost_claim_the_worker_hands_back_what_it_never_heard_of(seeded):
    deliveries_to([1, 2, 3], leads=1)
    worker = register_worker()
    sends = claim(worker, take=10).sends
    keep = {sends[0].delivery_id}

    assert release_claims(worker, keep=keep) == 2

    held = set(Delivery.objects.filter(worker_id=worker).values_list("pk", flat=True))
    assert held == keep


@pytest.mark.django_db
def test_queue_health_counts_deliveries_by_status_and_the_oldest_due(seeded):
    deliveries_to([1, 2, 3], leads=1)
    Delivery.objects.filter(provider_id=1).update(
        next_attempt_at=timezone.now() - timedelta(seconds=30)
    )
    worker = register_worker()
    first = Delivery.objects.get(provider_id=2)
    record_attempts([Record(first.pk, 0, Outcome(False, 1, 500), timezone.now())], worker_id=worker)

    health = queue_health()

    assert (health.pending, health.retrying, health.failed) == (2, 1, 0)
    assert 29 <= health.oldest_due_seconds <= 40
    assert (health.stranded, health.workers) == (0, 1)


@pytest.mark.django_db
def test_a_held_back_delivery_is_due_again_as_soon_as_its_provider_frees_a_place(seeded, settings):
    settings.DELIVERY_PER_PROVIDER_CONCURRENCY = 1
    deliveries_to([1], leads=3)
    worker = register_worker()
    [first] = claim(worker, take=5).sends
    # Its attempt has been going on for 4 s: the others are held back until it must be over.
    Delivery.objects.filter(pk=first.delivery_id).update(
        next_attempt_at=timezone.now() + timedelta(seconds=queue.lease_seconds() - 4)
    )
    Delivery.objects.filter(worker_id__isnull=True).update(next_attempt_at=timezone.now())
    assert claim(worker, take=5).put_back == 2
    held = Delivery.objects.filter(held_back=True)
    assert all(d.next_attempt_at > timezone.now() + timedelta(seconds=4) for d in held)

    record_attempts(
        [Record(first.delivery_id, 0, Outcome(True, 5, 200), timezone.now())], worker_id=worker
    )

    # One place freed: one held-back delivery is due now, the other still waits its turn.
    due = Delivery.objects.filter(worker_id__isnull=True, next_attempt_at__lte=timezone.now())
    assert due.count() == 1
    assert [s.provider_id for s in claim(worker, take=5).sends] == [1]
