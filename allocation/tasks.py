"""Background work of the engine, as procrastinate jobs run by `make worker` (`make run` starts
one): draining the waiting queue past what a request may spend on it, and a drain every minute
as a safety net for drains cut off by a dying process. Jobs are rows in PostgreSQL: one
deferred inside a transaction commits or rolls back with it.
"""

from __future__ import annotations

import contextlib
import time

from django.conf import settings
from django.dispatch import receiver
from procrastinate import RetryStrategy
from procrastinate.contrib.django import app
from procrastinate.exceptions import AlreadyEnqueued

from allocation.models import Lead
from allocation.services import allocate_waiting_leads, expire_waiting_leads
from providers.services import refresh_routing
from providers.signals import capacity_added

DRAINS = "drains"
ROUTING = "routing"
# Routing checks run every few seconds; their finished jobs are kept this long.
ROUTING_HISTORY_HOURS = 1
# Finished jobs stay this long (the admin shows them under Procrastinate), then go; failed
# ones stay until someone looks.
JOB_HISTORY_HOURS = 72
# A job that fails for any reason (a connection cut mid-job, PostgreSQL restarting, a lock
# timeout) runs again 1 s later, then 2 s, 3 s... for 10 attempts in about a minute: drains and
# housekeeping are safe to run twice, and none should wait for the next periodic run.
RETRY_SOON = RetryStrategy(max_attempts=10, wait=1, linear_wait=1)


@app.task(
    name="drain_waiting_leads", queue=DRAINS, queueing_lock="drain_waiting_leads", retry=RETRY_SOON
)
def drain_waiting_leads() -> int:
    """Allocate every waiting lead that can be allocated, oldest first; return how many.

    One queued at a time (queueing lock): a drain that is waiting to run covers whatever asked
    for another meanwhile.
    """
    return allocate_waiting_leads()


@app.periodic(cron="* * * * *", periodic_id="drain")
@app.task(
    name="drain_every_minute", queue=DRAINS, queueing_lock="drain_every_minute", retry=RETRY_SOON
)
def drain_every_minute(timestamp: int) -> int:
    """A drain a minute, so one that a dying process cut off is finished within a minute."""
    return allocate_waiting_leads()


@app.periodic(cron=f"* * * * * */{settings.ROUTING_REFRESH_SECONDS}", periodic_id="routing")
@app.task(name="apply_routing_transitions", queue=ROUTING, queueing_lock="routing_transitions")
def apply_routing_transitions(timestamp: int) -> int:
    """Every few seconds: open or close the providers whose time rules changed (hours
    beginning or ending, time off ending, a cap window rolling over), drain the queues they
    open, and expire the leads that waited longer than LEAD_MAX_WAIT. Return how many
    providers and leads changed.

    A periodic check rather than one job per transition deferred to its instant: the instants
    move with every lead that reaches a cap and every rule edit, and a missed or duplicated job
    would have to be reconciled; the check is one index probe (provider_routing_due) when
    nothing is due, and it catches up by itself after a worker was down.
    """
    return run_routing_transitions()


def run_routing_transitions() -> int:
    """What apply_routing_transitions does, callable directly (tests, manage.py)."""
    moved = refresh_routing()  # capacity_added after each commit that opened a provider
    expired = expire_waiting_leads()
    if expired:
        # Leads queued behind an expired one may go through now.
        drain_for_a_while()
    return moved + expired


@app.periodic(cron="* * * * *", periodic_id="stalled")
@app.task(name="retry_stalled_jobs", queueing_lock="retry_stalled_jobs", retry=RETRY_SOON)
async def retry_stalled_jobs(timestamp: int) -> int:
    """Run again the jobs whose worker stopped sending heartbeats (killed, or its host gone);
    return how many."""
    stalled = await app.job_manager.get_stalled_jobs()
    for job in stalled:
        await app.job_manager.retry_job(job)
    return len(stalled)


@app.periodic(cron="17 * * * *", periodic_id="remove_old_jobs")
@app.task(name="remove_old_jobs", queueing_lock="remove_old_jobs", retry=RETRY_SOON)
async def remove_old_jobs(timestamp: int) -> None:
    """Keep the job table small: every job that succeeded more than JOB_HISTORY_HOURS ago
    goes, once an hour."""
    await app.job_manager.delete_old_jobs(nb_hours=ROUTING_HISTORY_HOURS, queue=ROUTING)
    await app.job_manager.delete_old_jobs(nb_hours=JOB_HISTORY_HOURS)


def drain_for_a_while() -> int:
    """Drain for at most DRAIN_INLINE_SECONDS in this request; a background drain does the
    rest. Return how many leads this drain allocated."""
    deadline = time.monotonic() + settings.DRAIN_INLINE_SECONDS
    try:
        return allocate_waiting_leads(deadline=deadline)
    finally:
        if time.monotonic() >= deadline and Lead.objects.waiting().exists():
            with contextlib.suppress(AlreadyEnqueued):
                drain_waiting_leads.defer()


@receiver(capacity_added)
def drain_after_capacity_added(sender: object, service_ids: list[int], **kwargs: object) -> None:
    """A provider resumed, a quota was raised or a membership added (sent after its commit):
    serve who was waiting, a second's worth now, the rest in the background."""
    drain_for_a_while()
