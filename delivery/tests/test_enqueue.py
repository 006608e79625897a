"""Deliveries are created by the allocation itself: same statement, same transaction."""

from __future__ import annotations

import json
from types import SimpleNamespace

import psycopg
import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from procrastinate.contrib.django import app

from allocation import services as allocation_services
from allocation.models import Lead
from allocation.services import allocate_waiting_leads
from delivery.models import Delivery
from delivery.services import release_slot, start_lead_attempts
from delivery.tests.support import lead_job, plain_endpoint, queued, submit
from leaddist.tests.asgi_server import database_url_for_tests
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
    # One job for the lead, deferred by the allocation statement; the worker makes its attempts.
    assert queued("deliver_lead") == [lead_job(lead)]
    assert queued() == []


def test_the_lead_job_attempts_what_is_not_attempted_yet(seeded):
    plain_endpoint(1, url="https://p1.example/hook")
    plain_endpoint(2, url="https://p2.example/hook", email="p2@example.com")
    lead = submit(1, 1)
    ids = sorted(Delivery.objects.values_list("pk", flat=True))

    sends = start_lead_attempts(lead.pk)
    assert [send.delivery_id for send in sends] == ids
    # Provider 2's webhook and email each got a slot of their own, in the lead's one lease.
    assert sorted((s.lease.provider_id, s.lease.slot) for s in sends) == [(1, 0), (2, 0), (2, 1)]
    # Run again (its worker died after the first attempt was recorded): the rest only.
    for send in sends:
        release_slot(send.lease)
    Delivery.objects.filter(pk=ids[0]).update(attempts=1, status="delivered")
    assert [send.delivery_id for send in start_lead_attempts(lead.pk)] == ids[1:]


def test_deliveries_and_their_job_add_no_statement_to_the_allocation(seeded):
    with CaptureQueriesContext(connection) as plain:
        submit(1, 1)
    plain_endpoint(1, url="https://p1.example/hook")
    plain_endpoint(2, email="p2@example.com")

    with CaptureQueriesContext(connection) as delivering:
        lead = submit(1, 2)

    assert len(delivering.captured_queries) == len(plain.captured_queries)
    assert Delivery.objects.count() == 2
    assert queued("deliver_lead") == [lead_job(lead)]


def test_a_waiting_lead_enqueues_nothing(seeded):
    plain_endpoint(1, url="https://p1.example/hook")
    Provider.objects.exclude(pk=1).update(remaining_quota=0)

    lead = submit(1, 1)

    assert lead.status == Lead.Status.WAITING
    assert Delivery.objects.count() == 0
    assert queued("deliver_lead") == []


def test_a_drained_lead_is_delivered_like_an_intake(seeded):
    plain_endpoint(1, url="https://p1.example/hook")
    Provider.objects.update(remaining_quota=0)
    lead = submit(1, 1)
    assert Delivery.objects.count() == 0
    Provider.objects.update(remaining_quota=5)

    assert allocate_waiting_leads() == 1

    delivery = Delivery.objects.get()
    assert (delivery.lead_id, delivery.provider_id, delivery.channel) == (lead.pk, 1, "webhook")
    assert queued("deliver_lead") == [lead_job(lead)]


class Deadlock(Exception):
    sqlstate = "40P01"


def test_a_rolled_back_attempt_leaves_neither_deliveries_nor_jobs(seeded, monkeypatch):
    """The engine's first attempt fails after its write (a deadlock, retried): only the
    committed attempt's deliveries and job exist."""
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
    assert queued("deliver_lead") == [lead_job(lead)]


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
    assert queued("deliver_lead") == []


def test_delivery_jobs_are_inserted_without_notify_and_other_queues_still_are(jobs, seeded_tx):
    """A NOTIFY makes its transaction's commit wait for every other NOTIFYing commit (delivery
    migration 0005): the allocation statement's job must not send one. Other queues' jobs do."""
    url = database_url_for_tests("leaddist-test-listener")
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute('LISTEN "procrastinate_any_queue_v1"')
        plain_endpoint(1, url="https://p1.example/hook")
        submit(1, 1)
        other = app.configure_task("leaddist.tests.no_such_task", queue="default").defer()

        notified = [json.loads(n.payload)["job_id"] for n in listener.notifies(timeout=1.0)]

    assert [status for status, _ in queued("deliver_lead")] == ["todo"]
    assert notified == [other]
