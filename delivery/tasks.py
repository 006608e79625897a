"""Delivery jobs (procrastinate), on their own queue so that drains and deliveries never wait
for each other. The task is async: one worker runs many attempts at once (its --concurrency),
so an endpoint that hangs until the timeout holds one slot, not the whole worker.
"""

from __future__ import annotations

from datetime import timedelta

from procrastinate import JobContext
from procrastinate.contrib.django import app

from allocation.services import DELIVERY_JOB_QUEUE, DELIVERY_JOB_TASK
from delivery import services
from delivery.pacing import intake_gate

# The allocation statement defers DELIVERY_JOB_TASK on this queue by name, in SQL.
DELIVERIES = DELIVERY_JOB_QUEUE
# An open delivery this long past its due time has lost its job (a due job normally starts
# within seconds, and a stalled one is retried within a couple of minutes).
STUCK_AFTER = timedelta(minutes=15)


@app.task(name=DELIVERY_JOB_TASK, queue=DELIVERIES)
async def deliver_lead(lead_id: int, at: float | None = None) -> list[str]:
    """Deferred by the allocation of a lead with deliveries: their first attempts, once intake
    is quiet or ``at`` (the allocation's Unix time) is DELIVERY_INTAKE_FIRST_SECONDS ago."""
    await intake_gate().wait(at)
    return await services.deliver_lead(lead_id)


@app.task(name=services.ATTEMPT_JOB_TASK, queue=DELIVERIES, pass_context=True)
async def deliver(
    context: JobContext,
    delivery_id: int,
    generation: int = 0,
    attempt: int | None = None,
    postponed: int = 0,
) -> str:
    """One attempt of a delivery, if it is still due (delivery.services explains the keys);
    ``postponed``: how many times this job found its provider's slots all leased before. It
    waits for intake as deliver_lead does, counted from its scheduled time (now, for a resend)."""
    scheduled = context.job.scheduled_at
    await intake_gate().wait(scheduled.timestamp() if scheduled else None)
    return await services.attempt_delivery(
        delivery_id, generation=generation, attempt=attempt, postponed=postponed
    )


@app.periodic(cron="*/5 * * * *", periodic_id="resume_stuck_deliveries")
@app.task(name="resume_stuck_deliveries", queue=DELIVERIES, queueing_lock="resume_stuck_deliveries")
def resume_stuck_deliveries(timestamp: int) -> int:
    """Every 5 minutes: give a new job to open deliveries whose job was lost."""
    return services.resume_stuck(older_than=STUCK_AFTER)
