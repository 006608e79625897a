"""Recording attempts (delivery.attempts.record_attempts): many in one statement, each exactly
as if recorded alone; and which attempt decides a delivery's fate."""

from __future__ import annotations

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from delivery.attempts import Record, record_attempts
from delivery.models import Attempt, Delivery
from delivery.queue import claim, register_worker
from delivery.resend import resend_deliveries
from delivery.sending import Outcome
from delivery.tests.support import plain_endpoint, submit
from delivery.worker import RECORD_BATCH_MAX, _batch
from events.models import Event


def open_deliveries(leads: int) -> list[Delivery]:
    for provider_id in (1, 2, 3, 4):
        plain_endpoint(provider_id, url=f"https://p{provider_id}.example/hook")
    for n in range(leads):
        submit(1, n)
    return list(Delivery.objects.order_by("pk"))


def outcome(ok: bool) -> Outcome:
    return Outcome(ok, 7, status_code=200 if ok else 503, error="" if ok else "HTTP 503: busy")


def test_attempts_recorded_in_one_statement_each_move_on_as_alone(seeded, settings):
    settings.DELIVERY_PER_PROVIDER_CONCURRENCY = 8
    settings.DELIVERY_RETRY_BASE_SECONDS = 60
    deliveries = open_deliveries(4)  # 12 deliveries, 3 to each of providers 1-4
    worker = register_worker()
    assert len(claim(worker, take=20).sends) == 12
    started = timezone.now()
    records = [Record(d.pk, 0, outcome(d.pk % 2 == 0), started) for d in deliveries]

    with CaptureQueriesContext(connection) as statements:
        statuses = record_attempts(records, worker_id=worker)

    assert len(statements.captured_queries) == 1
    expected = {d.pk: "delivered" if d.pk % 2 == 0 else "retrying" for d in deliveries}
    assert statuses == expected
    for row in Delivery.objects.all():
        assert (row.status, row.attempts, row.last_latency_ms) == (expected[row.pk], 1, 7)
        assert row.worker_id is None  # the claim is released
        if row.status == "delivered":
            assert row.next_attempt_at is None
            assert row.delivered_at is not None
        else:
            # Due again after the first retry delay: 60 s, half of it random.
            wait = (row.next_attempt_at - timezone.now()).total_seconds()
            assert 25 <= wait <= 61
            assert row.last_error == "HTTP 503: busy"
    assert Attempt.objects.count() == len(deliveries)
    assert Event.objects.filter(type="delivery.updated").count() == len(deliveries)


def test_a_batch_holds_one_attempt_per_delivery_and_at_most_the_maximum():
    started = timezone.now()
    records = [Record(n % 3, 0, outcome(True), started) for n in range(6)]
    records += [Record(100 + n, 0, outcome(True), started) for n in range(RECORD_BATCH_MAX)]

    batch, rest = _batch(records)

    assert [r.delivery_id for r in batch[:3]] == [0, 1, 2]
    assert len(batch) == RECORD_BATCH_MAX
    assert len({r.delivery_id for r in batch}) == len(batch)
    assert len(rest) == len(records) - RECORD_BATCH_MAX


def test_a_success_decides_whoever_holds_the_delivery_and_a_failure_only_its_holder(seeded):
    first, second = open_deliveries(1)[:2]
    old, new = register_worker(), register_worker()
    claim(old, take=10)
    # Both deliveries were handed to another worker meanwhile (the old one was taken for dead).
    Delivery.objects.update(worker_id=new)
    started = timezone.now()

    statuses = record_attempts(
        [
            Record(first.pk, 0, outcome(True), started),
            Record(second.pk, 0, outcome(False), started),
        ],
        worker_id=old,
    )

    assert statuses == {first.pk: "delivered", second.pk: "pending"}
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, first.worker_id, first.attempts) == ("delivered", None, 1)
    # The failure is logged, and the new holder's own attempt decides.
    assert (second.status, second.worker_id, second.attempts) == ("pending", new, 1)
    assert Attempt.objects.filter(delivery=second).count() == 1


def test_an_attempt_of_an_earlier_generation_is_logged_without_moving_the_delivery(seeded):
    delivery = open_deliveries(1)[0]
    worker = register_worker()
    claim(worker, take=10)
    resend_deliveries(Delivery.objects.filter(pk=delivery.pk))  # generation 1, due now

    statuses = record_attempts(
        [Record(delivery.pk, 0, outcome(True), timezone.now())], worker_id=worker
    )

    delivery.refresh_from_db()
    assert statuses == {delivery.pk: "pending"}
    assert (delivery.generation, delivery.status, delivery.worker_id) == (1, "pending", None)
    assert delivery.next_attempt_at <= timezone.now()


def test_the_attempt_of_a_deleted_delivery_records_nothing(seeded):
    delivery = open_deliveries(1)[0]
    delivery.lead.delete()

    assert record_attempts([Record(delivery.pk, 0, outcome(True), timezone.now())]) == {}
    assert not Attempt.objects.exists()
