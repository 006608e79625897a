"""The delivery tests' own helpers (delivery/tests/support.py), where a busy machine could
fool them."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from django.db import connection
from django.utils import timezone

from delivery.attempts import Record, record_attempts
from delivery.models import Delivery
from delivery.queue import claim, register_worker
from delivery.sending import Outcome
from delivery.tests import support
from delivery.tests.support import nothing_due, plain_endpoint, submit


def test_a_retry_recorded_just_after_the_check_reads_the_clock_is_not_nothing_due(
    seeded_tx, settings, monkeypatch
):
    """deliver_due's check, stalled at the worst moment: a worker records a failed attempt
    (retry due at once, by the worker's clock) right after the check has read the clock. The
    delivery is still work to do, before and after that record: the check never reports nothing
    due, which would stop the worker before the retry (CI's failure, docs/TESTING.md)."""
    settings.DELIVERY_RETRY_BASE_SECONDS = 0
    plain_endpoint(1, url="https://p1.example/hook")
    delivery = Delivery.objects.get(lead=submit(1, 1))
    worker = register_worker()
    [send] = claim(worker, take=1).sends
    clock = timezone.now
    recorded: list[bool] = []

    def record_a_retry() -> None:
        try:
            failure = Outcome(False, 5, status_code=500, error="HTTP 500: down")
            record_attempts([Record(send.delivery_id, 0, failure, clock())], worker_id=worker)
            recorded.append(True)
        finally:
            connection.close()

    def clock_then_a_record():
        read = clock()
        if not recorded:  # the worker's record, in its own session, as the check stalls
            recorder = threading.Thread(target=record_a_retry)
            recorder.start()
            recorder.join()
        return read

    monkeypatch.setattr(support, "timezone", SimpleNamespace(now=clock_then_a_record))

    # In flight; if the check reads the clock at all, the failure is recorded just after.
    assert not nothing_due()

    monkeypatch.undo()
    if not recorded:  # the check saw the claim and never read the clock: recorded now
        record_a_retry()
    delivery.refresh_from_db()
    assert (delivery.status, delivery.worker_id) == ("retrying", None)
    assert delivery.next_attempt_at <= timezone.now()
    assert not nothing_due()  # the retry is due
