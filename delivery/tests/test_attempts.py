"""Attempts over real HTTP, run by a real procrastinate worker: signing, retries, timeouts,
redirects, email, resends, and one provider's hanging endpoint beside the others."""

from __future__ import annotations

import json
import time
from datetime import timedelta

from asgiref.sync import async_to_sync
from django.core import mail
from django.utils import timezone
from standardwebhooks import Webhook

from delivery import services as delivery_services
from delivery.models import Attempt, Delivery
from delivery.services import attempt_delivery, resend_deliveries, resume_stuck
from delivery.tests.support import endpoint, submit
from events.models import Event
from events.types import DELIVERY_UPDATED


def deliveries_by_provider(lead) -> dict[int, Delivery]:
    return {d.provider_id: d for d in Delivery.objects.filter(lead=lead)}


def test_failed_attempts_are_retried_under_one_webhook_id_until_delivered(
    jobs, seeded_tx, receiver, local_targets
):
    receiver.script["/p1"] = [500, 503, 200]
    secrets = {pid: endpoint(pid, url=receiver.url(f"/p{pid}")) for pid in (1, 2, 3)}
    lead = submit(1, 1)

    jobs.run()

    deliveries = deliveries_by_provider(lead)
    assert Delivery.objects.filter(lead=lead).count() == 3  # one per (lead, provider)
    assert {pid: d.status for pid, d in deliveries.items()} == dict.fromkeys((1, 2, 3), "delivered")
    assert {pid: d.attempts for pid, d in deliveries.items()} == {1: 3, 2: 1, 3: 1}
    assert deliveries[1].last_status_code == 200
    assert deliveries[1].last_latency_ms is not None
    log = Attempt.objects.filter(delivery=deliveries[1]).order_by("number")
    assert [(a.number, a.succeeded, a.status_code) for a in log] == [
        (1, False, 500),
        (2, False, 503),
        (3, True, 200),
    ]
    assert len(log[0].error) < 1100  # the 100 kB error page was read only up to the cap
    for pid in (1, 2, 3):
        requests = receiver.of(f"/p{pid}")
        assert {r.headers["webhook-id"] for r in requests} == {str(deliveries[pid].pk)}
        for request in requests:
            Webhook(secrets[pid]).verify(request.body, request.headers)
    body = json.loads(receiver.of("/p2")[0].body)
    assert body == {
        "type": "lead.assigned",
        "delivery_id": deliveries[2].pk,
        "provider_id": 2,
        "role": "pool",
        "rank": 2,
        "lead": {
            "id": lead.pk,
            "name": "Ada",
            "phone": "+15550000001",
            "city": "Paris",
            "description": "",
            "service": {"id": 1, "slug": "service-1", "name": body["lead"]["service"]["name"]},
            "created_at": lead.created_at.isoformat(),
        },
    }
    events = [e.data for e in Event.objects.filter(type=DELIVERY_UPDATED).order_by("pk")]
    mine = [e for e in events if e["provider_id"] == 1]
    assert [(e["status"], e["attempts"]) for e in mine] == [
        ("retrying", 1),
        ("retrying", 2),
        ("delivered", 3),
    ]
    assert mine[-1] == {
        "delivery_id": deliveries[1].pk,
        "lead_id": lead.pk,
        "provider_id": 1,
        "channel": "webhook",
        "status": "delivered",
        "attempts": 3,
    }


def test_a_failure_is_retried_later_with_backoff_and_a_redirect_is_not_followed(
    jobs, seeded_tx, receiver, local_targets
):
    local_targets.DELIVERY_RETRY_BASE_SECONDS = 60
    receiver.script["/p1"] = [302]
    endpoint(1, url=receiver.url("/p1"))
    lead = submit(1, 1)
    before = timezone.now()

    jobs.run()

    delivery = Delivery.objects.get(lead=lead)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("retrying", 1, 302)
    # The first retry waits 30 to 60 s (half of the 60 s base is jitter).
    assert before + timedelta(seconds=29) < delivery.next_attempt_at
    assert delivery.next_attempt_at < timezone.now() + timedelta(seconds=61)
    assert len(receiver.requests) == 1  # the Location (a metadata address) was not requested
    todo = [json.loads(args) for status, args in jobs.of("deliver") if status == "todo"]
    assert todo == [{"delivery_id": delivery.pk, "generation": 0, "attempt": 1}]


def test_a_delivery_still_failing_after_the_retry_window_is_failed(
    jobs, seeded_tx, receiver, local_targets
):
    local_targets.DELIVERY_RETRY_HOURS = 0
    receiver.script["/p1"] = [500]
    endpoint(1, url=receiver.url("/p1"))
    lead = submit(1, 1)

    jobs.run()

    delivery = Delivery.objects.get(lead=lead)
    assert (delivery.status, delivery.attempts) == ("failed", 1)
    assert delivery.last_error.startswith("HTTP 500: xxx")
    assert [status for status, _ in jobs.of("deliver_lead")] == ["succeeded"]
    assert jobs.of("deliver") == []  # no retry


def test_an_endpoint_that_does_not_answer_times_out_without_delaying_other_providers(
    jobs, seeded_tx, receiver, local_targets
):
    """Provider 1's delivery is first in the queue and hangs past the 2 s timeout; providers
    2 and 3 are delivered meanwhile, not after it."""
    local_targets.DELIVERY_RETRY_BASE_SECONDS = 60
    receiver.script["/p1"] = [("hang", 5)]
    for pid in (1, 2, 3):
        endpoint(pid, url=receiver.url(f"/p{pid}"))
    lead = submit(1, 1)
    deliveries = deliveries_by_provider(lead)
    assert deliveries[1].pk < deliveries[2].pk < deliveries[3].pk
    started = time.monotonic()

    jobs.run(concurrency=4, queues=["deliveries"])

    hanging = Delivery.objects.get(pk=deliveries[1].pk)
    assert hanging.status == "retrying"
    assert hanging.last_error == "no answer within 2 s"
    assert 1900 <= hanging.last_latency_ms < 3000
    for pid in (2, 3):
        assert Delivery.objects.get(pk=deliveries[pid].pk).status == "delivered"
        assert receiver.of(f"/p{pid}")[0].at - started < 1.0


def test_an_email_endpoint_gets_the_lead_by_email(jobs, seeded_tx, local_targets):
    endpoint(2, email="leads@provider-two.example")
    lead = submit(1, 1)

    jobs.run()

    delivery = Delivery.objects.get(lead=lead)
    assert (delivery.channel, delivery.status, delivery.attempts) == ("email", "delivered", 1)
    [message] = mail.outbox
    assert message.to == ["leads@provider-two.example"]
    assert message.extra_headers["X-Leaddist-Delivery-Id"] == str(delivery.pk)
    assert "+15550000001" in message.body
    assert f"Lead #{lead.pk}" in message.body


def test_a_resend_is_a_new_attempt_under_the_same_webhook_id(
    jobs, seeded_tx, receiver, local_targets
):
    endpoint(1, url=receiver.url("/p1"))
    lead = submit(1, 1)
    jobs.run()
    delivery = Delivery.objects.get(lead=lead)
    assert delivery.status == "delivered"

    assert resend_deliveries(Delivery.objects.filter(pk=delivery.pk)) == 1
    jobs.run()

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.generation) == ("delivered", 2, 1)
    assert [r.headers["webhook-id"] for r in receiver.of("/p1")] == [str(delivery.pk)] * 2


def test_a_job_run_again_after_its_attempt_was_recorded_sends_nothing(
    jobs, seeded_tx, receiver, local_targets
):
    """retry_stalled_jobs may run a job again whose worker died after recording its attempt."""
    local_targets.DELIVERY_RETRY_BASE_SECONDS = 60
    receiver.script["/p1"] = [500]
    endpoint(1, url=receiver.url("/p1"))
    delivery = Delivery.objects.get(lead=submit(1, 1))
    run = async_to_sync(attempt_delivery)

    assert run(delivery.pk, generation=0, attempt=0) == "retrying"
    assert run(delivery.pk, generation=0, attempt=0) == "skipped"  # the same job, again
    assert run(delivery.pk, generation=7, attempt=None) == "skipped"  # an old generation

    assert len(receiver.requests) == 1


def test_an_open_delivery_whose_job_was_lost_gets_a_new_one(
    jobs, seeded_tx, receiver, local_targets
):
    endpoint(1, url=receiver.url("/p1"))
    delivery = Delivery.objects.get(lead=submit(1, 1))
    jobs.clear()  # the job is gone (say it failed on a bug, or someone cleared the queue)
    Delivery.objects.filter(pk=delivery.pk).update(
        next_attempt_at=timezone.now() - timedelta(minutes=20)
    )

    assert resume_stuck(older_than=timedelta(minutes=15)) == 1
    assert resume_stuck(older_than=timedelta(minutes=15)) == 0  # not twice
    jobs.run()

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("delivered", 1)
    assert len(receiver.of("/p1")) == 1


def test_a_hanging_providers_next_delivery_waits_for_its_one_slot(
    jobs, seeded_tx, receiver, local_targets, monkeypatch
):
    """With DELIVERY_PER_PROVIDER_CONCURRENCY at 1, provider 1's second delivery waits its turn
    in the queue instead of taking a second worker slot while the first one hangs."""
    local_targets.DELIVERY_RETRY_BASE_SECONDS = 60
    local_targets.DELIVERY_PER_PROVIDER_CONCURRENCY = 1
    # The postponed job must not fall due again before this worker run ends, however slow the
    # machine: the run would then attempt it once the hanging attempt is over.
    monkeypatch.setattr(delivery_services, "POSTPONE_JITTER", (15.0, 15.0))  # 2 s x 15
    receiver.script["/p1"] = [("hang", 5)]
    # Provider 2, in both leads, gets no endpoint: with one slot per provider its two
    # deliveries could overlap, and on a loaded machine the second be postponed as well.
    for pid in (1, 3, 4):
        endpoint(pid, url=receiver.url(f"/p{pid}"))
    first, second = submit(1, 1), submit(1, 2)  # providers 1, 2, 3 then 1, 4, 2

    jobs.run(concurrency=4, queues=["deliveries"])

    # The two leads' jobs run side by side: either one's attempt may be first to take the slot.
    hanging, waiting = sorted(
        Delivery.objects.filter(lead__in=(first, second), provider_id=1),
        key=lambda delivery: -delivery.attempts,
    )
    assert (hanging.status, hanging.attempts) == ("retrying", 1)
    assert (waiting.status, waiting.attempts) == ("pending", 0)  # postponed, not attempted
    assert len(receiver.of("/p1")) == 1
    todo = [json.loads(args) for status, args in jobs.of("deliver") if status == "todo"]
    assert {"delivery_id": waiting.pk, "generation": 0, "attempt": 0, "postponed": 1} in todo
    others = Delivery.objects.exclude(provider_id=1)
    assert sorted(others.values_list("provider_id", "status")) == [
        (3, "delivered"),
        (4, "delivered"),
    ]
