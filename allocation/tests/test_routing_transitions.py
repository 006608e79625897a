"""Capacity that time brings back (SPEC §2a): drains within seconds of the moment, and expiry.

The clock is ours (django.utils.timezone.now); the database and the worker are real.
"""

from datetime import UTC, datetime, timedelta

import pytest
from croniter import croniter
from django.utils import timezone
from procrastinate.contrib.django import app

from allocation.models import Lead
from allocation.services import LeadInput, allocate_waiting_leads, submit_lead
from allocation.tasks import apply_routing_transitions, run_routing_transitions
from events.models import Event
from providers.models import Provider
from providers.routing import parse_date_range
from providers.services import clean_routing, resume_provider, set_routing

MONDAY_10 = datetime(2026, 12, 7, 10, tzinfo=UTC)  # 11:00 in Oslo
TIME_OFF_ENDS = datetime(2026, 12, 7, 23, tzinfo=UTC)  # 00:00 on Tuesday in Oslo


class Clock:
    def __init__(self, monkeypatch, at):
        self.at = at
        monkeypatch.setattr(timezone, "now", lambda: self.at)


@pytest.fixture
def clock(monkeypatch):
    return Clock(monkeypatch, MONDAY_10)


def route(provider_id, **rules):
    provider = Provider.objects.get(pk=provider_id)
    return set_routing(provider, clean_routing(provider, **rules))


def submit(n, city="Oslo"):
    return submit_lead(LeadInput(service_id=1, name="Ada", phone=f"+4791{n:06d}", city=city))


def test_the_routing_check_runs_every_few_seconds(settings):
    periodic = next(
        task
        for task in app.periodic_registry.periodic_tasks.values()
        if task.task.name == "apply_routing_transitions"
    )
    runs = croniter(periodic.cron, MONDAY_10)

    first, second = runs.get_next(datetime), runs.get_next(datetime)

    assert (second - first).total_seconds() == settings.ROUTING_REFRESH_SECONDS <= 5


def test_a_waiting_lead_is_drained_within_seconds_when_time_off_ends(seeded_tx, clock, jobs):
    for pid in (2, 3, 4):
        route(pid, tz="Europe/Oslo", add_time_off=[parse_date_range("2026-12-01..2026-12-07")])
    lead = submit(1)
    assert lead.status == Lead.Status.WAITING
    assert set(
        Provider.objects.filter(pk__in=[2, 3, 4]).values_list("routing_changes_at", flat=True)
    ) == {TIME_OFF_ENDS}

    # A second before: nothing moves. Three seconds after: the worker's routing check opens
    # the providers and their services' queues are drained, in the same job.
    clock.at = TIME_OFF_ENDS - timedelta(seconds=1)
    apply_routing_transitions.defer(timestamp=0)
    jobs.run(queues=["routing"])
    lead.refresh_from_db()
    assert lead.status == Lead.Status.WAITING
    clock.at = TIME_OFF_ENDS + timedelta(seconds=3)
    apply_routing_transitions.defer(timestamp=1)
    jobs.run(queues=["routing"])

    lead.refresh_from_db()
    assert lead.status == Lead.Status.ALLOCATED
    assert lead.allocated_at == TIME_OFF_ENDS + timedelta(seconds=3)
    assert sorted(lead.allocations.values_list("provider_id", flat=True)) == [1, 2, 3]
    # (the worker's periodic deferrer may have added runs of its own)
    assert {status for status, _ in jobs.of("apply_routing_transitions")} == {"succeeded"}


def test_a_daily_cap_rolling_over_drains_the_waiting_lead(seeded_tx, clock):
    route(2, tz="Europe/Oslo", daily_cap=1)
    Provider.objects.filter(pk=4).update(status="paused")
    first, second = submit(1), submit(2)
    assert (first.status, second.status) == (Lead.Status.ALLOCATED, Lead.Status.WAITING)

    clock.at = TIME_OFF_ENDS + timedelta(seconds=2)
    moved = run_routing_transitions()

    second.refresh_from_db()
    assert moved == 1
    assert second.status == Lead.Status.ALLOCATED


def test_an_edit_that_adds_capacity_drains_after_its_commit(seeded_tx, clock):
    for pid in (2, 3, 4):
        route(pid, cities=["Bergen"])
    lead = submit(1, city="Oslo")
    assert lead.status == Lead.Status.WAITING

    route(2, cities=["Bergen", "Oslo"])
    route(3, cities=[])

    lead.refresh_from_db()
    assert lead.status == Lead.Status.ALLOCATED


def test_a_lead_waiting_longer_than_lead_max_wait_expires_and_is_never_allocated(
    seeded_tx, clock, settings
):
    settings.LEAD_MAX_WAIT = 3600
    Provider.objects.filter(pk__in=[2, 3]).update(status="paused")
    old, behind = submit(1), submit(2)
    clock.at = MONDAY_10 + timedelta(minutes=30)
    recent = submit(3, city="Oslo")

    clock.at = MONDAY_10 + timedelta(hours=1, seconds=1)
    run_routing_transitions()
    for pid in (2, 3):
        resume_provider(Provider.objects.get(pk=pid))
    allocate_waiting_leads()

    statuses = dict(Lead.objects.values_list("pk", "status"))
    assert statuses[old.pk] == statuses[behind.pk] == Lead.Status.EXPIRED
    assert statuses[recent.pk] == Lead.Status.ALLOCATED
    assert Lead.objects.get(pk=old.pk).expired_at == MONDAY_10 + timedelta(hours=1, seconds=1)
    assert not Lead.objects.get(pk=old.pk).allocations.exists()
    expired_events = Event.objects.filter(type="lead.expired").order_by("pk")
    assert [e.data["lead_id"] for e in expired_events] == [old.pk, behind.pk]
