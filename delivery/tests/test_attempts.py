"""Attempts over real HTTP, made by a real delivery worker (delivery.worker.Worker on its own
event loop): signing, retries, timeouts, redirects, email, resends, one provider's hanging
endpoint beside the others, and the worker's connections given back when it stops."""

from __future__ import annotations

import json
from datetime import timedelta

from django.core import mail
from django.db import connection
from django.utils import timezone
from standardwebhooks import Webhook

from delivery.models import Attempt, Delivery
from delivery.resend import resend_deliveries
from delivery.tests.support import deliver_due, endpoint, running_worker, submit, wait_until
from events.models import Event
from events.types import DELIVERY_UPDATED


def deliveries_by_provider(lead) -> dict[int, Delivery]:
    return {d.provider_id: d for d in Delivery.objects.filter(lead=lead)}


def test_failed_attempts_are_retried_under_one_webhook_id_until_delivered(
    seeded_tx, receiver, local_targets
):
    receiver.script["/p1"] = [500, 503, 200]
    secrets = {pid: endpoint(pid, url=receiver.url(f"/p{pid}")) for pid in (1, 2, 3)}
    lead = submit(1, 1)

    deliver_due()

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
    seeded_tx, receiver, local_targets
):
    local_targets.DELIVERY_RETRY_BASE_SECONDS = 60
    receiver.script["/p1"] = [302]
    endpoint(1, url=receiver.url("/p1"))
    lead = submit(1, 1)
    before = timezone.now()

    deliver_due()

    delivery = Delivery.objects.get(lead=lead)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("retrying", 1, 302)
    # The first retry waits 30 to 60 s (half of the 60 s base is jitter).
    assert before + timedelta(seconds=29) < delivery.next_attempt_at
    assert delivery.next_attempt_at < timezone.now() + timedelta(seconds=61)
    assert len(receiver.requests) == 1  # the Location (a metadata address) was not requested
    assert delivery.worker_id is None


def test_a_delivery_still_failing_after_the_retry_window_is_failed(
    seeded_tx, receiver, local_targets
):
    local_targets.DELIVERY_RETRY_HOURS = 0
    receiver.script["/p1"] = [500]
    endpoint(1, url=receiver.url("/p1"))
    lead = submit(1, 1)

    deliver_due()

    delivery = Delivery.objects.get(lead=lead)
    assert (delivery.status, delivery.attempts) == ("failed", 1)
    assert delivery.last_error.startswith("HTTP 500: xxx")
    assert delivery.next_attempt_at is None  # no retry


def test_an_endpoint_that_does_not_answer_times_out_without_delaying_other_providers(
    seeded_tx, receiver, local_targets
):
    """Provider 1's delivery is first in the queue and its endpoint never answers (the test
    holds it silent): its attempt gives up at the 2 s timeout, and providers 2 and 3 are sent
    while it is still waiting, not after it. Proven by order (the others' requests reached the
    receiver before provider 1's attempt gave up), not by a stopwatch: a loaded machine makes
    everything slower but cannot swap the two."""
    local_targets.DELIVERY_RETRY_BASE_SECONDS = 60
    receiver.script["/p1"] = [("hang", receiver.gate())]  # silent until the test ends
    for pid in (1, 2, 3):
        endpoint(pid, url=receiver.url(f"/p{pid}"))
    lead = submit(1, 1)
    deliveries = deliveries_by_provider(lead)
    assert deliveries[1].pk < deliveries[2].pk < deliveries[3].pk

    deliver_due()

    hanging = Delivery.objects.get(pk=deliveries[1].pk)
    assert (hanging.status, hanging.attempts) == ("retrying", 1)
    assert hanging.last_error == "no answer within 2 s"
    # Its own timeout ended it (never early; later only as late as the machine is slow), while
    # the endpoint had still not answered.
    assert hanging.last_latency_ms >= 1990
    assert receiver.active["/p1"] == 1
    [timed_out] = Attempt.objects.filter(delivery_id=hanging.pk)
    # started_at is read just before the attempt's clock starts: this is no later than the
    # moment it gave up.
    gave_up_at = timed_out.started_at + timedelta(milliseconds=timed_out.latency_ms)
    for pid in (2, 3):
        delivery = Delivery.objects.get(pk=deliveries[pid].pk)
        assert (delivery.status, delivery.attempts) == ("delivered", 1)
        [request] = receiver.of(f"/p{pid}")
        assert request.received_at < gave_up_at  # sent while provider 1's attempt hung


def test_an_email_endpoint_gets_the_lead_by_email(seeded_tx, local_targets):
    endpoint(2, email="leads@provider-two.example")
    lead = submit(1, 1)

    deliver_due()

    delivery = Delivery.objects.get(lead=lead)
    assert (delivery.channel, delivery.status, delivery.attempts) == ("email", "delivered", 1)
    [message] = mail.outbox
    assert message.to == ["leads@provider-two.example"]
    assert message.extra_headers["X-Leaddist-Delivery-Id"] == str(delivery.pk)
    assert "+15550000001" in message.body
    assert f"Lead #{lead.pk}" in message.body


def test_a_resend_is_a_new_attempt_under_the_same_webhook_id(seeded_tx, receiver, local_targets):
    endpoint(1, url=receiver.url("/p1"))
    lead = submit(1, 1)
    deliver_due()
    delivery = Delivery.objects.get(lead=lead)
    assert delivery.status == "delivered"

    assert resend_deliveries(Delivery.objects.filter(pk=delivery.pk)) == 1
    deliver_due()

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.generation) == ("delivered", 2, 1)
    assert [r.headers["webhook-id"] for r in receiver.of("/p1")] == [str(delivery.pk)] * 2


def test_a_stopped_worker_gives_its_database_connections_back_to_the_pool(
    seeded_tx, receiver, local_targets
):
    """Its claims and its records each ran on a pooled connection, in a thread of their own;
    stopping closes each in its thread. A test process runs a worker per test: had it kept them,
    the pool (DB_POOL_MAX_SIZE) would run dry after about ten and every connection would wait
    the pool's timeout."""
    endpoint(1, url=receiver.url("/p1"))
    lead = submit(1, 1)
    pool = connection.pool

    def lent() -> int:
        stats = pool.get_stats()
        return stats["pool_size"] - stats["pool_available"]

    before = lent()

    deliver_due()

    # Delivered and recorded: both threads took a connection.
    assert Delivery.objects.get(lead=lead).status == "delivered"
    # A connection the pool is still opening counts as lent for a moment.
    wait_until(lambda: lent() <= before, seconds=10, what="the worker's connections back")


def test_a_delivery_due_long_ago_is_sent_like_any_other(seeded_tx, receiver, local_targets):
    """Nothing keeps a list of work beside the deliveries: one due for 20 minutes (its worker
    was down, say) is simply the first the next worker claims."""
    endpoint(1, url=receiver.url("/p1"))
    delivery = Delivery.objects.get(lead=submit(1, 1))
    Delivery.objects.filter(pk=delivery.pk).update(
        next_attempt_at=timezone.now() - timedelta(minutes=20)
    )

    deliver_due()

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("delivered", 1)
    assert len(receiver.of("/p1")) == 1


def test_a_hanging_providers_next_delivery_waits_for_its_one_place(
    seeded_tx, receiver, local_targets
):
    """With DELIVERY_PER_PROVIDER_CONCURRENCY at 1, provider 1's second delivery waits its turn
    in the queue instead of taking a second worker place while the first one hangs; the other
    providers are delivered meanwhile. The first attempt hangs until the test lets it answer,
    so "meanwhile" holds however slowly a loaded machine runs the worker."""
    local_targets.DELIVERY_RETRY_BASE_SECONDS = 60
    local_targets.DELIVERY_PER_PROVIDER_CONCURRENCY = 1
    local_targets.DELIVERY_TIMEOUT_SECONDS = 30
    hang = receiver.gate()
    receiver.script["/p1"] = [("hang", hang), 200]
    for pid in (1, 3, 4):
        endpoint(pid, url=receiver.url(f"/p{pid}"))
    first, second = submit(1, 1), submit(1, 2)  # providers 1, 2, 3 then 1, 4, 2
    others = Delivery.objects.exclude(provider_id=1)
    mine = Delivery.objects.filter(lead__in=(first, second), provider_id=1)

    with running_worker(concurrency=4):
        wait_until(
            lambda: others.filter(status="delivered").count() == 2, seconds=60, what="3 and 4"
        )
        # 3 and 4 were delivered while provider 1's first attempt was still in flight: it is
        # not over (its gate is shut; a worker that waited for it would have recorded its
        # timeout first). One of provider 1's deliveries is held, the other waits in the
        # queue, unclaimed and unattempted.
        assert [(d.status, d.attempts) for d in mine] == [("pending", 0), ("pending", 0)]
        assert len(receiver.of("/p1")) == 1
        assert sorted(mine.values_list("worker_id", flat=True), key=bool)[0] is None
        assert sum(1 for d in mine if d.worker_id is not None) == 1
        # Once the hanging attempt is answered, the second goes.
        hang.set()
        wait_until(
            lambda: mine.filter(status="delivered").count() == 2, seconds=60, what="provider 1"
        )

    assert receiver.peak["/p1"] == 1
    assert sorted(mine.values_list("attempts", flat=True)) == [1, 1]  # waiting is no attempt
    assert sorted(others.values_list("provider_id", "status")) == [
        (3, "delivered"),
        (4, "delivered"),
    ]
