"""Deliveries are created by the allocation itself: same statement, same transaction."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext

from allocation.models import Lead
from allocation.services import allocate_waiting_leads
from allocation.signals import deliveries_created
from delivery.models import Delivery
from delivery.tests.support import plain_endpoint, queued, submit
from providers.models import Provider

pytestmark = pytest.mark.django_db


def test_an_allocated_lead_gets_one_pending_delivery_per_provider_and_channel(seeded):
    plain_endpoint(1, url="https://p1.example/hook")
    plain_endpoint(2, url="https://p2.example/hook", email="p2@example.com")
    plain_endpoint(5, url="https://p5.example/hook")  # not picked

    lead = submit(1, 1)  # providers 1, 2, 3

    rows = list(
        Delivery.objects.filter(lead=lead)
        .order_by("id")
        .values_list("provider_id", "channel", "role", "rank", "status", "attempts")
    )
    assert rows == [
        (1, "webhook", "mandatory", 1, "pending", 0),
        (2, "webhook", "pool", 2, "pending", 0),
        (2, "email", "pool", 2, "pending", 0),
    ]
    ids = sorted(Delivery.objects.values_list("pk", flat=True))
    assert queued() == [("todo", {"delivery_id": pk, "generation": 0, "attempt": 0}) for pk in ids]


def test_without_endpoints_the_allocation_runs_the_same_statements_as_before(seeded):
    with CaptureQueriesContext(connection) as plain:
        submit(1, 1)
    plain_endpoint(1, url="https://p1.example/hook")
    plain_endpoint(2, email="p2@example.com")

    with CaptureQueriesContext(connection) as delivering:
        submit(1, 2)

    assert not any("procrastinate" in q["sql"] for q in plain.captured_queries)
    deferrals = [q for q in delivering.captured_queries if "procrastinate" in q["sql"]]
    assert len(deferrals) == 1  # every job of the lead in one statement
    assert len(delivering.captured_queries) == len(plain.captured_queries) + 1
    assert Delivery.objects.count() == 2


def test_a_waiting_lead_enqueues_nothing(seeded):
    plain_endpoint(1, url="https://p1.example/hook")
    Provider.objects.exclude(pk=1).update(remaining_quota=0)

    lead = submit(1, 1)

    assert lead.status == Lead.Status.WAITING
    assert Delivery.objects.count() == 0
    assert queued() == []


def test_a_drained_lead_is_delivered_like_an_intake(seeded):
    plain_endpoint(1, url="https://p1.example/hook")
    Provider.objects.update(remaining_quota=0)
    lead = submit(1, 1)
    assert Delivery.objects.count() == 0
    Provider.objects.update(remaining_quota=5)

    assert allocate_waiting_leads() == 1

    delivery = Delivery.objects.get()
    assert (delivery.lead_id, delivery.provider_id, delivery.channel) == (lead.pk, 1, "webhook")
    assert queued() == [("todo", {"delivery_id": delivery.pk, "generation": 0, "attempt": 0})]


class Deadlock(Exception):
    sqlstate = "40P01"


def test_a_rolled_back_attempt_leaves_neither_deliveries_nor_jobs(seeded):
    """The engine's first attempt fails after its write (a deadlock, retried): only the
    committed attempt's deliveries and jobs exist."""
    plain_endpoint(1, url="https://p1.example/hook", email="p1@example.com")
    calls = SimpleNamespace(count=0)

    def fail_once(sender, delivery_ids, **kwargs):
        calls.count += 1
        if calls.count == 1:
            error = OperationalError("deadlock detected")
            error.__cause__ = Deadlock()
            raise error

    deliveries_created.connect(fail_once)
    try:
        lead = submit(1, 1)
    finally:
        deliveries_created.disconnect(fail_once)

    assert calls.count == 2
    ids = list(Delivery.objects.order_by("id").values_list("pk", flat=True))
    assert len(ids) == 2
    assert set(Delivery.objects.values_list("lead_id", flat=True)) == {lead.pk}
    assert [args["delivery_id"] for _, args in queued()] == ids


def test_an_allocation_rolled_back_by_its_caller_enqueues_nothing(seeded):
    from django.db import transaction

    plain_endpoint(1, url="https://p1.example/hook")

    def allocate_then_fail() -> None:
        with transaction.atomic():
            submit(1, 1)
            raise RuntimeError

    with pytest.raises(RuntimeError):
        allocate_then_fail()

    assert Delivery.objects.count() == 0
    assert queued() == []
