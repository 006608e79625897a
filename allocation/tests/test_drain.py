"""Draining the waiting queue: global order of arrival, exact under the cursor lock, bounded in a
request, and finished in the background by a worker (procrastinate) that survives the request."""

from __future__ import annotations

import threading

import pytest
from asgiref.sync import async_to_sync
from django.db import connection, transaction
from procrastinate.contrib.django import app
from procrastinate.jobs import Status

from allocation import tasks as allocation_tasks
from allocation.models import Lead
from allocation.services import (
    LeadInput,
    allocate_next_waiting,
    allocate_waiting_leads,
    submit_lead,
)
from allocation.tasks import (
    drain_for_a_while,
    drain_waiting_leads,
    remove_old_jobs,
    retry_stalled_jobs,
)
from leaddist.testing import wait_for_lock_waiters
from providers.locks import lock_cursors
from providers.models import Provider
from providers.services import resume_provider


def lead(service_id: int, n: int) -> LeadInput:
    return LeadInput(service_id=service_id, name="Ada", phone=f"+1555050{n:04d}", city="Paris")


@pytest.mark.django_db
def test_leads_of_services_sharing_providers_are_served_in_global_order_of_arrival(seeded):
    # Services 1 and 3 share providers 1-4; providers 1-3 get quota for exactly 3 leads in all,
    # everyone else is paused or empty, so only arrival order decides who gets them.
    Provider.objects.exclude(pk__in=[1, 2, 3, 4]).update(status="paused")
    Provider.objects.update(remaining_quota=0)
    arrivals = [submit_lead(lead(service, n)) for n, service in enumerate([3, 1, 3, 1, 1])]
    Provider.objects.filter(pk__in=[1, 2, 3]).update(remaining_quota=3)  # bypasses drains

    allocated = allocate_waiting_leads()

    statuses = [Lead.objects.get(pk=lead.pk).status for lead in arrivals]
    assert allocated == 3
    assert statuses == ["allocated", "allocated", "allocated", "waiting", "waiting"]


@pytest.mark.concurrency
@pytest.mark.django_db(transaction=True)
def test_the_oldest_waiting_lead_is_read_under_the_cursor_lock(seeded_tx):
    """A waiting lead that commits while a drain waits for the cursor is not passed over."""
    holding, release = threading.Event(), threading.Event()
    stored = {}

    def store_a_waiting_lead_while_holding_the_cursor() -> None:
        try:
            with transaction.atomic():
                lock_cursors([1])
                stored["lead"] = Lead.objects.create(
                    service_id=1, name="Ada", phone="+15550509999", city="Paris", status="waiting"
                )
                holding.set()
                assert release.wait(30)
        finally:
            connection.close()

    holder = threading.Thread(target=store_a_waiting_lead_while_holding_the_cursor)
    holder.start()
    assert holding.wait(30)
    result = {}

    def drain() -> None:
        try:
            result["outcome"] = allocate_next_waiting(1)
        finally:
            connection.close()

    drainer = threading.Thread(target=drain)
    drainer.start()
    wait_for_lock_waiters(1)  # the drain waits for the cursor
    release.set()
    holder.join(30)
    drainer.join(30)

    assert result["outcome"] == (True, None)
    assert Lead.objects.get(pk=stored["lead"].pk).status == "allocated"


def test_a_request_drains_for_a_second_and_a_worker_drains_the_rest(seeded_tx, jobs, settings):
    settings.DRAIN_INLINE_SECONDS = 0  # nothing fits in this request's share
    Provider.objects.update(status="paused")
    waiting = [submit_lead(lead(2, n)) for n in range(3)]
    Provider.objects.update(status="active")

    drained_inline = drain_for_a_while()
    queued = jobs.of("drain_waiting_leads")
    jobs.run()

    assert drained_inline == 0
    assert [status for status, _ in queued] == ["todo"]
    assert {Lead.objects.get(pk=lead.pk).status for lead in waiting} == {"allocated"}
    assert [status for status, _ in jobs.of("drain_waiting_leads")] == ["succeeded"]


def test_resuming_a_provider_drains_through_the_bounded_drain(seeded_tx, jobs):
    Provider.objects.filter(pk__in=[2, 3, 4]).update(status="paused")
    waiting = submit_lead(lead(1, 1))

    resume_provider(Provider.objects.get(pk=2))
    resume_provider(Provider.objects.get(pk=3))

    assert Lead.objects.get(pk=waiting.pk).status == "allocated"
    assert jobs.of("drain_waiting_leads") == []  # done within the request: nothing left over


def test_a_drain_whose_worker_died_is_run_again(seeded_tx, jobs):
    """A job left 'doing' by a worker that stopped sending heartbeats (killed, host gone) is
    retried by the periodic retry_stalled_jobs, and the drain it was doing gets done."""
    Provider.objects.update(status="paused")
    waiting = submit_lead(lead(2, 1))
    Provider.objects.update(status="active")
    drain_waiting_leads.defer()
    # As its worker left it: fetched (doing), then the worker's heartbeat row pruned.
    manager = app.job_manager
    worker_id = async_to_sync(manager.register_worker)()
    fetched = async_to_sync(manager.fetch_job)(queues=None, worker_id=worker_id)
    async_to_sync(manager.unregister_worker)(worker_id)
    assert fetched.task_name == "drain_waiting_leads"
    assert [status for status, _ in jobs.of("drain_waiting_leads")] == ["doing"]
    retry_stalled_jobs.defer(timestamp=0)

    jobs.run()

    assert {status for status, _ in jobs.of("retry_stalled_jobs")} == {"succeeded"}
    assert [status for status, _ in jobs.of("drain_waiting_leads")] == ["succeeded"]
    assert Lead.objects.get(pk=waiting.pk).status == "allocated"


def test_finished_jobs_are_removed_after_the_history_window_failed_ones_kept(
    seeded_tx, jobs, monkeypatch
):
    monkeypatch.setattr(allocation_tasks, "JOB_HISTORY_HOURS", 0)  # every finished job is old
    drain_waiting_leads.defer()
    jobs.run()
    failing = drain_waiting_leads.defer()
    manager = app.job_manager
    worker_id = async_to_sync(manager.register_worker)()
    async_to_sync(manager.fetch_job)(queues=None, worker_id=worker_id)
    async_to_sync(manager.finish_job_by_id_async)(failing, status=Status.FAILED, delete_job=False)
    async_to_sync(manager.unregister_worker)(worker_id)
    remove_old_jobs.defer(timestamp=0)

    jobs.run()

    assert [status for status, _ in jobs.of("drain_waiting_leads")] == ["failed"]
