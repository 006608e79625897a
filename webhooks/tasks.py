"""Background work of the quota-reset webhook (procrastinate jobs, run by `make worker`)."""

from __future__ import annotations

from procrastinate.contrib.django import app

from allocation.tasks import DRAINS, RETRY_SOON


@app.task(name="finish_quota_reset", queue=DRAINS, retry=RETRY_SOON)
def finish_quota_reset(processed_event_id: int) -> int:
    """Finish a reset's drain and announce it if nobody has; deferred with the reset itself."""
    from webhooks.services import finish_reset  # which defers this task: imported late

    return finish_reset(processed_event_id)
