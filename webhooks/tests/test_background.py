"""The background half of a quota reset (procrastinate, run by the worker): it finishes the
drain that the webhook bounds to about a second, and announces a reset whose process died
before it could, once."""

from __future__ import annotations

import time

import pytest
from django.utils import timezone

import webhooks.services
from allocation.models import Lead
from events.models import Event
from events.types import QUOTA_RESET
from providers.models import Provider, Service
from webhooks.models import ProcessedEvent
from webhooks.services import APPLIED, apply_quota_reset
from webhooks.tests.helpers import assert_invariants, post, submit_leads

SHA = "c" * 64


class ProcessDied(BaseException):
    """The process that answered the webhook dies (no `except Exception` catches this)."""


@pytest.fixture
def finish_at_once(monkeypatch):
    """The finishing job is due at once rather than FINISH_AFTER_SECONDS after the reset."""
    monkeypatch.setattr(webhooks.services, "FINISH_AFTER_SECONDS", 0)


def test_a_reset_whose_process_dies_before_its_drain_is_finished_by_the_worker(
    seeded_tx, jobs, finish_at_once, monkeypatch
):
    waiting = submit_leads(1, 16)[-3:]  # service 1 holds 13 leads; three wait
    assert {lead.status for lead in waiting} == {Lead.Status.WAITING}

    def die(event):
        raise ProcessDied

    monkeypatch.setattr(webhooks.services, "_drain", die)
    with pytest.raises(ProcessDied):
        apply_quota_reset(event_id="evt_died", body_sha256=SHA, provider_ids=None)
    monkeypatch.undo()

    event = ProcessedEvent.objects.get(event_id="evt_died")
    assert event.announced_at is None  # committed, never announced
    assert [status for status, _ in jobs.of("finish_quota_reset")] == ["todo"]

    jobs.run()

    event.refresh_from_db()
    assert [status for status, _ in jobs.of("finish_quota_reset")] == ["succeeded"]
    assert {Lead.objects.get(pk=lead.pk).status for lead in waiting} == {Lead.Status.ALLOCATED}
    assert event.announced_at is not None
    assert event.leads_allocated == 3
    resets = Event.objects.filter(type=QUOTA_RESET)
    assert [e.data["event_id"] for e in resets] == ["evt_died"]
    assert resets.get().data["leads_allocated"] == 3
    assert_invariants()


def test_a_reset_announced_by_the_webhook_is_not_announced_again_by_the_worker(
    seeded_tx, jobs, finish_at_once
):
    submit_leads(1, 14)

    outcome = apply_quota_reset(event_id="evt_ok", body_sha256=SHA, provider_ids=None)
    jobs.run()

    assert outcome.status == APPLIED
    assert (outcome.leads_allocated, outcome.leads_waiting) == (1, 0)
    assert [status for status, _ in jobs.of("finish_quota_reset")] == ["succeeded"]
    assert Event.objects.filter(type=QUOTA_RESET).count() == 1
    assert ProcessedEvent.objects.get().leads_allocated == 1


def test_a_duplicate_delivery_queues_no_second_finishing_job(seeded_tx, jobs):
    apply_quota_reset(event_id="evt_twice", body_sha256=SHA, provider_ids=None)
    apply_quota_reset(event_id="evt_twice", body_sha256=SHA, provider_ids=None)

    assert len(jobs.of("finish_quota_reset")) == 1


def waiting_leads(count: int) -> None:
    """``count`` waiting leads, spread over the three services, stored in one statement."""
    now = timezone.now()
    Lead.objects.bulk_create(
        Lead(
            service_id=n % 3 + 1,
            name="Ada",
            phone=f"+1666{n:07d}",
            city="Paris",
            status=Lead.Status.WAITING,
            wait_reason=Lead.WaitReason.NOT_ENOUGH_PROVIDERS,
            created_at=now,
        )
        for n in range(count)
    )


def test_ten_thousand_waiting_leads_and_a_full_reset_answer_within_two_seconds_then_drain(
    client, seeded_tx, jobs, finish_at_once
):
    """SPEC §5: the gateway has its answer within 2 s; the worker drains every lead after."""
    Provider.objects.update(quota=10_000, remaining_quota=0)
    waiting_leads(10_000)

    started = time.monotonic()
    answer = post(client, {"eventId": "evt_10k"})
    elapsed = time.monotonic() - started

    body = answer.json()
    assert answer.status_code == 200, body
    assert elapsed < 2.0
    assert body["leadsAllocated"] + body["leadsWaiting"] == 10_000
    assert body["leadsWaiting"] > 0  # most of the queue is the worker's

    jobs.run()

    assert not Lead.objects.waiting().exists()
    assert Lead.objects.allocated().count() == 10_000
    assert Service.objects.count() == 3
    assert Event.objects.filter(type=QUOTA_RESET).count() == 1
    assert_invariants()
