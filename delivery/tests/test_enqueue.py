"""Deliveries are created with the allocation itself: delivery's trigger on the allocation
rows, in the allocating statement, so in its transaction (delivery migration 0006)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext

from allocation import services as allocation_services
from allocation.models import Lead
from allocation.services import allocate_waiting_leads
from delivery.models import Delivery
from delivery.tests.support import plain_endpoint, submit
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
    # Due at once, from the allocation's own time, held by no worker yet.
    lead.refresh_from_db(fields=["allocated_at"])
    for delivery in Delivery.objects.filter(lead=lead):
        assert delivery.next_attempt_at == delivery.created_at == lead.allocated_at
        assert delivery.worker_id is None


def test_deliveries_add_no_statement_to_the_allocation(seeded):
    with CaptureQueriesContext(connection) as plain:
        submit(1, 1)
    plain_endpoint(1, url="https://p1.example/hook")
    plain_endpoint(2, email="p2@example.com")

    with CaptureQueriesContext(connection) as delivering:
        lead = submit(1, 2)

    assert len(delivering.captured_queries) == len(plain.captured_queries)
    assert set(Delivery.objects.values_list("lead_id", "provider_id")) == {
        (lead.pk, 1),
        (lead.pk, 2),
    }


def test_a_waiting_lead_enqueues_nothing(seeded):
    plain_endpoint(1, url="https://p1.example/hook")
    Provider.objects.exclude(pk=1).update(remaining_quota=0)

    lead = submit(1, 1)

    assert lead.status == Lead.Status.WAITING
    assert Delivery.objects.count() == 0


def test_a_drained_lead_is_delivered_like_an_intake(seeded):
    plain_endpoint(1, url="https://p1.example/hook")
    Provider.objects.update(remaining_quota=0)
    lead = submit(1, 1)
    assert Delivery.objects.count() == 0
    Provider.objects.update(remaining_quota=5)

    assert allocate_waiting_leads() == 1

    delivery = Delivery.objects.get()
    assert (delivery.lead_id, delivery.provider_id, delivery.channel) == (lead.pk, 1, "webhook")


class Deadlock(Exception):
    sqlstate = "40P01"


def test_a_rolled_back_attempt_leaves_no_deliveries(seeded, monkeypatch):
    """The engine's first attempt fails after its write (a deadlock, retried): only the
    committed attempt's deliveries exist."""
    plain_endpoint(1, url="https://p1.example/hook", email="p1@example.com")
    calls = SimpleNamespace(count=0)
    announce = allocation_services.announce_after_commit

    def fail_once() -> None:  # runs right after the allocation statement, in its transaction
        calls.count += 1
        if calls.count == 1:
            error = OperationalError("deadlock detected")
            error.__cause__ = Deadlock()
            raise error
        announce()

    monkeypatch.setattr(allocation_services, "announce_after_commit", fail_once)
    lead = submit(1, 1)

    assert calls.count == 2
    assert Delivery.objects.count() == 2
    assert set(Delivery.objects.values_list("lead_id", flat=True)) == {lead.pk}


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
