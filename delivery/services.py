"""Delivery's business actions: endpoints, the enqueue at allocation, attempts and resends.

Each delivery runs as a chain of procrastinate jobs on the ``deliveries`` queue, one job per
attempt. A job is keyed by (delivery, generation, attempt): it does its attempt only if the
delivery is still open, still in that generation (a resend starts a new one) and, for a
scheduled retry, has not been attempted since the job was deferred. So a job run twice (its
worker died after recording, and retry_stalled_jobs ran it again) sends nothing twice, and a
resend never leaves two retry schedules side by side. A job whose worker died before recording
runs again and sends again under the same webhook-id, which receivers use to deduplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from delivery.encryption import UndecryptableSecret, needs_reencryption, reencrypt_secret
from delivery.guard import check_url
from delivery.models import Attempt, Delivery, Endpoint
from delivery.sending import Outcome
from events.services import record_event
from events.types import DELIVERY_UPDATED
from leaddist.http.audit import log_event
from providers.models import Provider

LEAD_ASSIGNED = "lead.assigned"
T = TypeVar("T")


def retry_delay(attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failures: exponential from
    DELIVERY_RETRY_BASE_SECONDS, capped at DELIVERY_RETRY_MAX_SECONDS, with jitter (half the
    delay is random) so endpoints coming back are not hit by every retry at once."""
    delay = min(
        settings.DELIVERY_RETRY_BASE_SECONDS * 2 ** max(attempts - 1, 0),
        settings.DELIVERY_RETRY_MAX_SECONDS,
    )
    return delay / 2 + random.uniform(0, delay / 2)


# --- Endpoints ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointChange:
    endpoint: Endpoint | None
    new_secret: str | None  # set when a secret was created or rotated: show it once


def validate_webhook_url(url: str) -> None:
    """Raise UnsafeTarget unless ``url`` may be delivered to now (syntax and resolution)."""
    check_url(url)


def set_endpoint(
    provider: Provider,
    *,
    url: str | None = None,
    email: str | None = None,
    clear: bool = False,
    rotate_secret: bool = False,
    who: str = "unknown",
) -> EndpointChange:
    """Set (None: keep) the provider's webhook URL and email; a URL gets a secret if it has none.

    ``clear`` removes both first. The URL is checked by the SSRF guard (UnsafeTarget); the new
    secret, if any, is returned for showing once. A change is logged on ``leaddist.audit`` once
    committed, as done by ``who`` (``staff:<username>`` or ``command``) (endpoint_changes).
    """
    started = time.monotonic()
    if url:
        validate_webhook_url(url)
    with transaction.atomic():
        endpoint, _ = Endpoint.objects.select_for_update().get_or_create(provider=provider)
        before = (endpoint.url, endpoint.email, endpoint.secret)
        if clear:
            endpoint.url = endpoint.email = endpoint.secret = ""
        if url is not None:
            endpoint.url = url
        if email is not None:
            endpoint.email = email
        new_secret = None
        if not endpoint.url:
            endpoint.secret = ""  # a URL set again later gets a new secret, shown again
        elif rotate_secret or not endpoint.secret:
            new_secret = Endpoint.generate_secret()
            endpoint.set_secret(new_secret)
        endpoint.full_clean()
        after = (endpoint.url, endpoint.email, endpoint.secret)
        changes = endpoint_changes(before, after)
        if changes:
            transaction.on_commit(
                lambda: log_event(
                    "delivery_endpoint",
                    started=started,
                    who=who,
                    provider_id=provider.pk,
                    **changes,
                )
            )
        if not endpoint.url and not endpoint.email:
            endpoint.delete()
            return EndpointChange(None, None)
        endpoint.save()
    return EndpointChange(endpoint, new_secret)


def _change(before: str, after: str) -> str | None:
    if before == after:
        return None
    return "set" if not before else "cleared" if not after else "changed"


def _host(url: str) -> str | None:
    return urlsplit(url).hostname if url else None


def endpoint_changes(before: tuple[str, str, str], after: tuple[str, str, str]) -> dict[str, Any]:
    """What an endpoint change did, for the audit line, from (url, email, secret) before and
    after: ``url``/``email`` "set", "changed" or "cleared"; the URL's host before and after
    (never its path or query, which may carry a token); ``secret`` "created", "rotated" or
    "removed". Never the secret or the email address. Empty when nothing changed."""
    (old_url, old_email, old_secret), (new_url, new_email, new_secret) = before, after
    secret = None
    if old_secret != new_secret:
        secret = "created" if not old_secret else "removed" if not new_secret else "rotated"
    url = _change(old_url, new_url)
    fields = {
        "url": url,
        "url_host": _host(new_url) if url in ("set", "changed") else None,
        "previous_url_host": _host(old_url) if url in ("changed", "cleared") else None,
        "email": _change(old_email, new_email),
        "secret": secret,
    }
    return {name: value for name, value in fields.items() if value is not None}


def reencrypt_endpoint_secrets() -> int:
    """Store every signing secret encrypted with the first of DELIVERY_SECRET_KEYS; return how
    many were rewritten (0 when all already were: running it again changes nothing).

    All or nothing: if a secret is under no key of the setting, UndecryptableSecret is raised
    and no row changes. The clear secrets themselves stay the same; providers notice nothing.
    """
    with transaction.atomic():
        # Locked in pk order: a set_endpoint in flight (it locks its one row) either commits
        # first, and its new secret is read here, or waits for us and writes after.
        endpoints = list(
            Endpoint.objects.select_for_update().exclude(secret="").order_by("pk").only("secret")
        )
        stale = [endpoint for endpoint in endpoints if needs_reencryption(endpoint.secret)]
        for endpoint in stale:
            try:
                endpoint.secret = reencrypt_secret(endpoint.secret)
            except UndecryptableSecret as exc:
                raise UndecryptableSecret(f"the secret of provider #{endpoint.pk}") from exc
        Endpoint.objects.bulk_update(stale, ["secret"])
    return len(stale)


# --- Provider slots -------------------------------------------------------------------------

# A lease outlasts the attempt's own timeout by this much: time to record the attempt, and to
# wait for a thread and a connection on a busy worker, before the slot may go to another job.
# It is also how long a slot stays lost when its worker is killed mid-attempt, after the timeout.
LEASE_MARGIN_SECONDS = 30

# The provider's lowest free slot among its first %(slots)s, leased in one statement. SKIP
# LOCKED: concurrent acquisitions (any worker, any host) each take a different free slot
# without waiting for one another, and one that finds every free slot taken by the others gets
# no row. The row lock lasts this statement only (autocommit); the lease is what holds the slot.
ACQUIRE_SLOT_SQL = """
UPDATE delivery_providerslot
   SET delivery_id = %(delivery_id)s,
       leased_until = now() + make_interval(secs => %(lease_seconds)s)
 WHERE id = (SELECT id
               FROM delivery_providerslot
              WHERE provider_id = %(provider_id)s
                AND slot < %(slots)s
                AND leased_until <= now()
              ORDER BY slot
              LIMIT 1
                FOR UPDATE SKIP LOCKED)
RETURNING slot, leased_until
"""

# The provider's missing slot rows, free: made by its first attempt (or the first after
# DELIVERY_PER_PROVIDER_CONCURRENCY was raised). Two workers doing it at once insert each row
# once: the second waits for the first's commit, then skips the rows it made.
CREATE_SLOTS_SQL = """
INSERT INTO delivery_providerslot (provider_id, slot, delivery_id, leased_until)
SELECT %(provider_id)s, slot, NULL, now()
  FROM generate_series(0, %(slots)s - 1) AS slot
    ON CONFLICT (provider_id, slot) DO NOTHING
"""

# Free the slot if the lease is still this attempt's: an attempt that outlived its lease may
# find the slot leased by another job (of the same delivery, even), which it must not free.
RELEASE_SLOT_SQL = """
UPDATE delivery_providerslot
   SET leased_until = now()
 WHERE provider_id = %(provider_id)s AND slot = %(slot)s
   AND delivery_id = %(delivery_id)s AND leased_until = %(until)s
"""


@dataclass(frozen=True)
class Lease:
    """A provider slot held by one attempt until ``until`` (the database's clock)."""

    provider_id: int
    slot: int
    delivery_id: int
    until: datetime


def _slot_params(provider_id: int) -> dict[str, object]:
    """The provider, its number of slots and the length of a lease, as the slot SQL takes them."""
    return {
        "provider_id": provider_id,
        "slots": settings.DELIVERY_PER_PROVIDER_CONCURRENCY,
        "lease_seconds": settings.DELIVERY_TIMEOUT_SECONDS + LEASE_MARGIN_SECONDS,
    }


def acquire_slot(provider_id: int, *, delivery_id: int) -> Lease | None:
    """Lease one of the provider's DELIVERY_PER_PROVIDER_CONCURRENCY slots for an attempt of
    the delivery, or None when every one of them is leased, by whichever workers."""
    params = _slot_params(provider_id) | {"delivery_id": delivery_id}
    with connection.cursor() as cursor:
        cursor.execute(ACQUIRE_SLOT_SQL, params)
        row = cursor.fetchone()
        if row is None:
            # Every slot leased, or the rows missing: make any missing ones and try once more.
            # (Only then: a provider with a free slot costs this one statement.)
            cursor.execute(CREATE_SLOTS_SQL, params)
            cursor.execute(ACQUIRE_SLOT_SQL, params)
            row = cursor.fetchone()
    if row is None:
        return None
    slot, until = row
    return Lease(provider_id, slot, delivery_id, until)


def release_slot(lease: Lease) -> None:
    """Free the lease's slot now, unless the lease ran out and the slot went to another job."""
    params = {
        "provider_id": lease.provider_id,
        "slot": lease.slot,
        "delivery_id": lease.delivery_id,
        "until": lease.until,
    }
    with connection.cursor() as cursor:
        cursor.execute(RELEASE_SLOT_SQL, params)


# --- Attempts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """What one attempt sends, read before the network is touched, and the provider slot it
    runs in (None: every slot of the provider is leased, so the job must wait its turn)."""

    delivery_id: int
    provider_id: int
    channel: str
    body: bytes
    url: str = ""
    secret: str = ""
    email: str = ""
    subject: str = ""
    # Why nothing can be sent, found before the network is touched: the attempt fails with it.
    error: str = ""
    lease: Lease | None = None


def payload(delivery: Delivery) -> dict[str, Any]:
    lead = delivery.lead
    service = lead.service
    return {
        "type": LEAD_ASSIGNED,
        "delivery_id": delivery.pk,
        "provider_id": delivery.provider_id,
        "role": delivery.role,
        "rank": delivery.rank,
        "lead": {
            "id": lead.pk,
            "name": lead.name,
            "phone": lead.phone,
            "city": lead.city,
            "description": lead.description,
            "service": {"id": service.pk, "slug": service.slug, "name": service.name},
            "created_at": lead.created_at.isoformat(),
        },
    }


def _email_text(data: dict[str, Any]) -> str:
    lead = data["lead"]
    return (
        f"A new lead for {lead['service']['name']}:\n\n"
        f"Name: {lead['name']}\nPhone: {lead['phone']}\nCity: {lead['city']}\n"
        f"Description: {lead['description'] or '-'}\n\n"
        f"Lead #{lead['id']}, received {lead['created_at']}; you are provider "
        f"#{data['provider_id']} ({data['role']}, rank {data['rank']}).\n"
        f"Delivery #{data['delivery_id']}.\n"
    )


def _signing_secret(endpoint: Endpoint | None) -> tuple[str, str]:
    """The endpoint's clear secret and "", or "" and why it cannot be had."""
    if endpoint is None:
        return "", ""
    try:
        return endpoint.signing_secret, ""
    except UndecryptableSecret:
        # A key removed from DELIVERY_SECRET_KEYS too early: a failed attempt, retried, shows
        # it on the delivery; putting the key back heals the retries.
        return "", "the signing secret is under no key of DELIVERY_SECRET_KEYS"


def start_attempt(delivery_id: int, *, generation: int, attempt: int | None) -> Send | None:
    """What to send for this job, with a slot of its provider leased for it if one is free
    (Send.lease); None when the job has nothing to do any more (and then no slot is taken)."""
    delivery = (
        Delivery.objects.select_related("lead__service", "provider__endpoint")
        .filter(pk=delivery_id, generation=generation)
        .open()
        .first()
    )
    if delivery is None or (attempt is not None and delivery.attempts != attempt):
        return None
    lease = acquire_slot(delivery.provider_id, delivery_id=delivery.pk)
    endpoint: Endpoint | None = getattr(delivery.provider, "endpoint", None)
    data = payload(delivery)
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    if delivery.channel == Delivery.Channel.WEBHOOK:
        secret, error = _signing_secret(endpoint)
        return Send(
            delivery.pk,
            delivery.provider_id,
            delivery.channel,
            body,
            url=endpoint.url if endpoint else "",
            secret=secret,
            error=error,
            lease=lease,
        )
    return Send(
        delivery.pk,
        delivery.provider_id,
        delivery.channel,
        body,
        email=endpoint.email if endpoint else "",
        subject=f"New lead #{data['lead']['id']}: {data['lead']['service']['name']}",
        lease=lease,
    )


def announce(delivery: Delivery) -> None:
    record_event(
        DELIVERY_UPDATED,
        {
            "delivery_id": delivery.pk,
            "lead_id": delivery.lead_id,
            "provider_id": delivery.provider_id,
            "channel": delivery.channel,
            "status": delivery.status,
            "attempts": delivery.attempts,
        },
    )


def _schedule(delivery: Delivery, at: datetime, *, attempt: int | None, postponed: int = 0) -> None:
    from delivery.tasks import deliver

    # ``postponed`` only when there is one: every other job keeps the arguments a worker of
    # the previous release can run, during a rolling deploy.
    extra = {"postponed": postponed} if postponed else {}
    deliver.configure(schedule_at=at).defer(
        delivery_id=delivery.pk, generation=delivery.generation, attempt=attempt, **extra
    )


# While a delivery keeps failing, its delivery.updated events: every status change, the first
# few attempts, then every Nth attempt only (up to ~50 attempts over DELIVERY_RETRY_HOURS).
ANNOUNCE_FIRST_ATTEMPTS = 3
ANNOUNCE_EVERY_ATTEMPTS = 10


def should_announce(previous_status: str, delivery: Delivery) -> bool:
    """Whether this attempt's outcome is worth an event: a changed status always is."""
    return (
        delivery.status != previous_status
        or delivery.attempts <= ANNOUNCE_FIRST_ATTEMPTS
        or delivery.attempts % ANNOUNCE_EVERY_ATTEMPTS == 0
    )


def record_attempt(
    delivery_id: int,
    outcome: Outcome,
    *,
    generation: int,
    started_at: datetime,
    final: bool = False,
    lease: Lease | None = None,
) -> Delivery:
    """Log the attempt and move the delivery on: delivered, retrying (next job deferred in this
    transaction), or failed once it has been retried for DELIVERY_RETRY_HOURS. ``final``: the
    failure cannot heal by retrying (no endpoint any more). One transaction, with the event,
    which is left out for a repeated failure past the first few (should_announce), and with
    the release of the attempt's provider slot (``lease``): the attempt is over once recorded."""
    now = timezone.now()
    with transaction.atomic():
        delivery = Delivery.objects.select_for_update().get(pk=delivery_id)
        previous_status = delivery.status
        delivery.attempts += 1
        Attempt.objects.create(
            delivery=delivery,
            number=delivery.attempts,
            started_at=started_at,
            succeeded=outcome.succeeded,
            status_code=outcome.status_code,
            latency_ms=outcome.latency_ms,
            error=outcome.error,
        )
        delivery.last_status_code = outcome.status_code
        delivery.last_latency_ms = outcome.latency_ms
        delivery.last_error = outcome.error
        delivery.updated_at = now
        current = delivery.generation == generation and delivery.status in (
            Delivery.Status.PENDING,
            Delivery.Status.RETRYING,
        )
        if current:
            delivery.retrying_since = delivery.retrying_since or started_at
        if outcome.succeeded:
            delivery.status = Delivery.Status.DELIVERED
            delivery.delivered_at = now
            delivery.next_attempt_at = None
        elif current:
            window = timedelta(hours=settings.DELIVERY_RETRY_HOURS)
            if final or now - delivery.retrying_since >= window:
                delivery.status = Delivery.Status.FAILED
                delivery.next_attempt_at = None
            else:
                delivery.status = Delivery.Status.RETRYING
                delivery.next_attempt_at = now + timedelta(seconds=retry_delay(delivery.attempts))
                _schedule(delivery, delivery.next_attempt_at, attempt=delivery.attempts)
        # else: a resend started a new generation meanwhile; its own job carries on.
        delivery.save()
        if should_announce(previous_status, delivery):
            announce(delivery)
        if lease is not None:
            # After the delivery's row lock: the slot's row is the last lock taken here, and
            # taking a slot (acquire_slot) locks nothing else, so neither waits on the other.
            release_slot(lease)
    return delivery


def _in_thread(func: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """``func`` run in a thread of the pool, its connection handed back to the connection pool
    afterwards. Not Django's one thread for all sync work: a worker's attempts then read and
    record in parallel, which doubled its throughput."""

    def closing(*args: Any, **kwargs: Any) -> T:
        try:
            return func(*args, **kwargs)
        finally:
            connection.close()

    return sync_to_async(closing, thread_sensitive=False)


# A postponed job waits the attempt timeout (by then one of the provider's attempts should be
# over), times 2 for each postpone before it, at most POSTPONE_MAX_FACTOR times; of that, a
# random 50 to 100 %: a provider that hangs with a big backlog sees each waiting job come back
# every minute or so, not every few seconds.
POSTPONE_MAX_FACTOR = 8
POSTPONE_JITTER = (0.5, 1.0)


def postpone_wait(postponed: int) -> float:
    """Seconds a job waits before it tries again, when it finds its provider's slots all leased
    after ``postponed`` earlier postpones."""
    factor = min(2**postponed, POSTPONE_MAX_FACTOR)
    return settings.DELIVERY_TIMEOUT_SECONDS * factor * random.uniform(*POSTPONE_JITTER)


def postpone(delivery_id: int, *, generation: int, attempt: int | None, postponed: int) -> None:
    """The same job again later (postpone_wait), counted as one more postpone, not as an attempt;
    nothing if the delivery moved on meanwhile (attempted, resent, or closed)."""
    at = timezone.now() + timedelta(seconds=postpone_wait(postponed))
    with transaction.atomic():
        due = Delivery.objects.filter(pk=delivery_id, generation=generation).open()
        if attempt is not None:
            due = due.filter(attempts=attempt)
        # next_attempt_at follows the job: the admin shows when it comes back, and a delivery
        # whose provider hangs for longer than STUCK_AFTER is not taken for one that lost its
        # job (resume_stuck would give it a second one at each pass).
        if due.update(next_attempt_at=at):
            delivery = Delivery(pk=delivery_id, generation=generation)
            _schedule(delivery, at, attempt=attempt, postponed=postponed + 1)


# A provider whose slots are all leased is busy (its attempts take milliseconds) or stuck (they
# hang until the timeout). A busy one's job asks again after each of these waits, about 0.8 s
# in all, so its attempt goes out as soon as a slot frees, not 5 s or more later. A stuck one's
# (its oldest attempt in flight started over BUSY_NOT_STUCK_SECONDS ago) is postponed at once:
# waiting would hold this worker's slot, which the other providers' attempts need.
SLOT_RETRY_WAITS = (0.02, 0.05, 0.1, 0.2, 0.4)
BUSY_NOT_STUCK_SECONDS = 1.0

# Whether every attempt holding one of the provider's slots started less than %(young)s ago.
SLOTS_YOUNG_SQL = """
SELECT coalesce(min(leased_until), now()) - make_interval(secs => %(lease_seconds)s)
       > now() - make_interval(secs => %(young)s)
  FROM delivery_providerslot
 WHERE provider_id = %(provider_id)s AND slot < %(slots)s AND leased_until > now()
"""


def slots_held_briefly(provider_id: int) -> bool:
    """Whether the provider's attempts in flight all started within BUSY_NOT_STUCK_SECONDS."""
    with connection.cursor() as cursor:
        cursor.execute(
            SLOTS_YOUNG_SQL, _slot_params(provider_id) | {"young": BUSY_NOT_STUCK_SECONDS}
        )
        return cursor.fetchone()[0]


async def _wait_for_slot(send: Send) -> Send:
    """``send`` with a lease taken within SLOT_RETRY_WAITS if its provider is busy, not stuck;
    else still without one."""
    if not await _in_thread(slots_held_briefly)(send.provider_id):
        return send
    for wait in SLOT_RETRY_WAITS:
        await asyncio.sleep(wait)
        lease = await _in_thread(acquire_slot)(send.provider_id, delivery_id=send.delivery_id)
        if lease is not None:
            return replace(send, lease=lease)
    return send


async def attempt_delivery(
    delivery_id: int, *, generation: int, attempt: int | None, postponed: int = 0
) -> str:
    """Run one attempt of the delivery in a slot of its provider; return its status afterwards.

    "skipped": nothing to do. "postponed": the provider's DELIVERY_PER_PROVIDER_CONCURRENCY
    slots are all leased, by attempts of any worker on any host, so the job is deferred again
    (later each time): a provider whose endpoint hangs holds that many attempts in all, and
    every other provider's deliveries go on in the workers' other slots.
    """
    send = await _in_thread(start_attempt)(delivery_id, generation=generation, attempt=attempt)
    if send is None:
        return "skipped"
    if send.lease is None:
        send = await _wait_for_slot(send)
    if send.lease is None:
        await _in_thread(postpone)(
            delivery_id, generation=generation, attempt=attempt, postponed=postponed
        )
        return "postponed"
    try:
        return await _attempt(send, generation=generation)
    except BaseException:
        # The attempt was not recorded (recording frees the slot): free it now, not at expiry.
        # If that fails too (the database is gone), the lease still runs out.
        with contextlib.suppress(Exception):
            await _in_thread(release_slot)(send.lease)
        raise


def first_attempts_due(lead_id: int) -> list[int]:
    """The lead's deliveries not attempted yet (in their first generation), oldest first."""
    return list(
        Delivery.objects.filter(
            lead_id=lead_id, generation=0, attempts=0, status=Delivery.Status.PENDING
        )
        .order_by("pk")
        .values_list("pk", flat=True)
    )


async def deliver_lead(lead_id: int) -> list[str]:
    """The first attempt of each of the lead's deliveries, all at once; return their statuses.

    The allocation statement deferred this one job for the whole lead (allocation/services.py):
    one job to fetch and finish per lead, not one per delivery, which is what bounds a worker's
    rate (procrastinate fetches its jobs one at a time). A provider at its concurrency limit
    gets a job of its own instead of an attempt here (attempt_delivery postpones it), so a
    provider whose endpoint hangs holds this job's slot only while it has a free one of its own.
    Run twice (its worker died), it attempts only what was not attempted yet; an attempt cut
    off by the death is sent again, under the same webhook-id.
    """
    ids = await _in_thread(first_attempts_due)(lead_id)
    return list(
        await asyncio.gather(*(attempt_delivery(pk, generation=0, attempt=0) for pk in ids))
    )


async def _attempt(send: Send, *, generation: int) -> str:
    from delivery.sending import post_webhook, send_email

    delivery_id = send.delivery_id
    started_at = timezone.now()
    final = False
    if send.error:
        outcome = Outcome(False, 0, error=send.error)
    elif send.channel == Delivery.Channel.WEBHOOK and send.url:
        outcome = await post_webhook(
            send.url, send.body, secret=send.secret, webhook_id=str(delivery_id)
        )
    elif send.channel == Delivery.Channel.EMAIL and send.email:
        data = json.loads(send.body)
        outcome = await send_email(
            send.email, subject=send.subject, text=_email_text(data), delivery_id=delivery_id
        )
    else:
        outcome = Outcome(False, 0, error=f"the provider has no {send.channel} endpoint any more")
        final = True
    delivery = await _in_thread(record_attempt)(
        delivery_id,
        outcome,
        generation=generation,
        started_at=started_at,
        final=final,
        lease=send.lease,
    )
    return delivery.status


# --- Safety net ---------------------------------------------------------------------------


def resume_stuck(*, older_than: timedelta) -> int:
    """Defer a job for each open delivery whose attempt is overdue by ``older_than``: its job
    was lost (it failed on an error, or its queue was cleared). Return how many.

    A job still queued behind a backlog may run too; the (generation, attempt) key lets only
    the first of the two attempt, unless both start at the same moment.
    """
    now = timezone.now()
    with transaction.atomic():
        stuck = list(
            Delivery.objects.open()
            .filter(next_attempt_at__lt=now - older_than)
            .select_for_update(skip_locked=True)
            .order_by("next_attempt_at")[:1000]
        )
        for delivery in stuck:
            delivery.next_attempt_at = now
            delivery.save(update_fields=["next_attempt_at"])
            _schedule(delivery, now, attempt=delivery.attempts)
    return len(stuck)


# --- Resend ---------------------------------------------------------------------------------


def resend_deliveries(deliveries: QuerySet[Delivery]) -> int:
    """Start a new attempt of each delivery now, under its same id; return how many.

    A new generation: any retry still scheduled for an earlier one does nothing, and the new
    attempt gets a fresh DELIVERY_RETRY_HOURS of retries.
    """
    now = timezone.now()
    with transaction.atomic():
        rows = list(deliveries.select_for_update(of=("self",)).order_by("pk"))
        for delivery in rows:
            delivery.generation += 1
            delivery.status = Delivery.Status.PENDING
            delivery.retrying_since = None
            delivery.next_attempt_at = now
            delivery.updated_at = now
            delivery.save()
            _schedule(delivery, now, attempt=None)
            announce(delivery)
    return len(rows)
