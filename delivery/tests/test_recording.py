"""Recording attempts: many in one statement (the worker's AttemptRecorder), each exactly as if
recorded alone: its delivery moved on, its attempt logged, its slot freed, its retry deferred."""

from __future__ import annotations

import asyncio

from asgiref.sync import async_to_sync
from django.utils import timezone

from delivery import services as delivery_services
from delivery.models import Attempt, Delivery, ProviderSlot
from delivery.sending import Outcome
from delivery.services import Record, acquire_slots, record_attempts
from delivery.tests.support import plain_endpoint, queued, submit


def open_deliveries(leads: int) -> list[Delivery]:
    for provider_id in (1, 2, 3, 4):
        plain_endpoint(provider_id, url=f"https://p{provider_id}.example/hook")
    for n in range(leads):
        submit(1, n)
    return list(Delivery.objects.order_by("pk"))


def test_attempts_finishing_together_are_recorded_in_fewer_statements_each_as_alone(
    transactional_db, seeded_tx, settings, monkeypatch
):
    settings.DELIVERY_PER_PROVIDER_CONCURRENCY = 8
    settings.DELIVERY_RETRY_BASE_SECONDS = 60
    deliveries = open_deliveries(4)  # 12 deliveries, 3 to each of providers 1-4
    leases = acquire_slots([(d.pk, d.provider_id) for d in deliveries])
    statements = []
    real = delivery_services.record_attempts

    def counted(records):
        statements.append(len(records))
        return real(records)

    monkeypatch.setattr(delivery_services, "record_attempts", counted)
    started = timezone.now()

    async def finish_all() -> list[str]:
        recorder = delivery_services._recorder()
        return await asyncio.gather(
            *(
                recorder.record(
                    Record(
                        d.pk,
                        0,
                        Outcome(d.pk % 2 == 0, 7, status_code=200 if d.pk % 2 == 0 else 503),
                        started,
                        lease=leases[d.pk],
                    )
                )
                for d in deliveries
            )
        )

    statuses = async_to_sync(finish_all)()

    expected = ["delivered" if d.pk % 2 == 0 else "retrying" for d in deliveries]
    assert statuses == expected
    assert sum(statements) == len(deliveries)
    assert len(statements) < len(deliveries)  # batched: the first alone, the rest together
    rows = {row.pk: row for row in Delivery.objects.all()}
    for delivery, status in zip(deliveries, expected, strict=True):
        row = rows[delivery.pk]
        assert (row.status, row.attempts, row.last_latency_ms) == (status, 1, 7)
        assert (row.next_attempt_at is None) == (status == "delivered")
        assert (row.delivered_at is not None) == (status == "delivered")
    assert Attempt.objects.count() == len(deliveries)
    assert not ProviderSlot.objects.leased().exists()  # every slot freed by its record
    retries = sorted(args["delivery_id"] for _, args in queued())
    assert retries == [d.pk for d in deliveries if d.pk % 2 == 1]


def test_two_attempts_of_one_delivery_go_in_two_statements_in_order(
    transactional_db, seeded_tx, settings
):
    settings.DELIVERY_RETRY_BASE_SECONDS = 60
    delivery = open_deliveries(1)[0]
    started = timezone.now()

    async def twice() -> list[str]:
        recorder = delivery_services._recorder()
        return await asyncio.gather(
            recorder.record(Record(delivery.pk, 0, Outcome(False, 5, 503), started)),
            recorder.record(Record(delivery.pk, 0, Outcome(True, 5, 200), started)),
        )

    assert async_to_sync(twice)() == ["retrying", "delivered"]
    log = Attempt.objects.filter(delivery=delivery).order_by("number")
    assert [(a.number, a.succeeded) for a in log] == [(1, False), (2, True)]


def test_the_slot_of_an_attempt_whose_delivery_was_deleted_is_freed(transactional_db, seeded_tx):
    delivery = open_deliveries(1)[0]
    lease = acquire_slots([(delivery.pk, delivery.provider_id)])[delivery.pk]
    delivery.lead.delete()

    record = Record(delivery.pk, 0, Outcome(True, 5, 200), timezone.now(), lease=lease)

    assert record_attempts([record]) == {}
    assert not ProviderSlot.objects.leased().exists()
    assert not Attempt.objects.exists()
