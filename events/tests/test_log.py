"""The event log: positions in commit order, and django-eventstream's storage API over it."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, transaction
from django_eventstream.eventstream import get_current_event_id
from django_eventstream.storage import EventDoesNotExist
from django_eventstream.utils import get_storage

from events.hub import trim_log
from events.models import Event
from events.services import record_event
from events.types import CHANNEL, LEAD_WAITING


def record_committed(n: int) -> None:
    with transaction.atomic():
        record_event(LEAD_WAITING, {"lead_id": n, "service_id": 1})


@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
def test_positions_follow_commit_order_not_insert_order():
    inserted = threading.Event()
    release = threading.Event()

    def slow_writer() -> None:
        try:
            with transaction.atomic():
                record_event(LEAD_WAITING, {"lead_id": 1, "service_id": 1})
                inserted.set()
                assert release.wait(30)
        finally:
            connection.close()

    slow = threading.Thread(target=slow_writer)
    slow.start()
    assert inserted.wait(30)
    record_committed(2)  # inserted after lead 1's event, committed before it
    release.set()
    slow.join(30)

    by_position = [event.data["lead_id"] for event in Event.objects.published()]
    by_insertion = [event.data["lead_id"] for event in Event.objects.order_by("id")]
    assert by_insertion == [1, 2]
    assert by_position == [2, 1]


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_event_leaves_no_row_and_later_positions_still_grow():
    def fail_after_recording() -> None:
        with transaction.atomic():
            record_event(LEAD_WAITING, {"lead_id": 2, "service_id": 1})
            raise RuntimeError("the write it announced failed")

    record_committed(1)
    with pytest.raises(RuntimeError):
        fail_after_recording()
    record_committed(3)

    published = list(Event.objects.published().values_list("seq", "data"))
    assert [data["lead_id"] for _, data in published] == [1, 3]
    assert published[0][0] < published[1][0]


@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_get_distinct_positions_in_commit_order():
    def writer(n: int) -> None:
        try:
            for k in range(10):
                record_committed(n * 100 + k)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    seqs = list(Event.objects.published().values_list("seq", flat=True))
    assert len(seqs) == len(set(seqs)) == 60
    assert Event.objects.filter(seq__isnull=True).count() == 0
    # Each writer committed its events one after another: their positions grow in that order.
    for n in range(6):
        mine = [
            e.data["lead_id"] for e in Event.objects.published() if e.data["lead_id"] // 100 == n
        ]
        assert mine == sorted(mine)


@pytest.mark.django_db(transaction=True)
def test_django_eventstream_storage_reads_and_writes_the_log():
    storage = get_storage()
    start = storage.get_current_id(CHANNEL)

    appended = storage.append_event(CHANNEL, LEAD_WAITING, {"lead_id": 7, "service_id": 2})
    record_committed(8)

    assert appended.id > start
    assert [(e.type, e.data, e.id) for e in storage.get_events(CHANNEL, start)] == [
        (LEAD_WAITING, {"lead_id": 7, "service_id": 2}, appended.id),
        (LEAD_WAITING, {"lead_id": 8, "service_id": 1}, appended.id + 1),
    ]
    assert get_current_event_id([CHANNEL]) == f"{CHANNEL}:{appended.id + 1}"
    with pytest.raises(EventDoesNotExist):
        storage.get_events(CHANNEL, appended.id + 50)  # a position from the future


@pytest.mark.django_db(transaction=True)
def test_trimmed_positions_are_reported_as_gone(settings):
    record_committed(1)
    record_committed(2)
    record_committed(3)
    first = Event.objects.published().first()
    Event.objects.filter(pk=first.pk).update(created_at="2000-01-01T00:00:00Z")

    trimmed = trim_log()

    assert trimmed == 1
    with pytest.raises(EventDoesNotExist):
        get_storage().get_events(CHANNEL, first.seq - 1)
    assert len(get_storage().get_events(CHANNEL, first.seq)) == 2
