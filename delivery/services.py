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
from collections import Counter
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

from allocation.services import DELIVERY_JOB_QUEUE
from delivery.encryption import (
    UndecryptableSecret,
    decrypt_secret,
    needs_reencryption,
    reencrypt_secret,
)
from delivery.guard import check_url
from delivery.loops import per_loop
from delivery.models import Delivery, Endpoint
from delivery.sending import Outcome
from events.services import announce_after_commit, record_event
from events.types import DELIVERY_UPDATED
from leaddist.http.audit import log_event
from providers.models import Provider

LEAD_ASSIGNED = "lead.assigned"
T = TypeVar("T")


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

# For each (delivery, provider) asked for, the provider's lowest free slot among its first
# %(slots)s, leased in one statement. SKIP LOCKED: concurrent acquisitions (any worker, any
# host) each take a different free slot without waiting for one another, and one that finds
# every free slot taken by the others gets no row. The row locks last this statement only
# (autocommit); the lease is what holds the slot. Two deliveries of one provider in one call
# may be offered the same slot: one of them gets it, the other no row (it asks again alone).
ACQUIRE_SLOTS_SQL = """
UPDATE delivery_providerslot AS slot
   SET delivery_id = wanted.delivery_id,
       leased_until = now() + make_interval(secs => %(lease_seconds)s)
  FROM {wanted} AS wanted(delivery_id, provider_id)
 CROSS JOIN LATERAL (SELECT id
                       FROM delivery_providerslot
                      WHERE provider_id = wanted.provider_id
                        AND slot < %(slots)s
                        AND leased_until <= now()
                      ORDER BY slot
                      LIMIT 1
                        FOR UPDATE SKIP LOCKED) AS free
 WHERE slot.id = free.id
RETURNING slot.provider_id, slot.slot, slot.delivery_id, slot.leased_until
"""
WANTED_PARAMS = "unnest(%(deliveries)s::bigint[], %(providers)s::bigint[])"

# The providers' missing slot rows, free: made by a provider's first attempt (or the first after
# DELIVERY_PER_PROVIDER_CONCURRENCY was raised). Two workers doing it at once insert each row
# once: the second waits for the first's commit, then skips the rows it made.
CREATE_SLOTS_SQL = """
INSERT INTO delivery_providerslot (provider_id, slot, delivery_id, leased_until)
SELECT provider_id, slot, NULL, now()
  FROM unnest(%(providers)s::bigint[]) AS provider_id,
       generate_series(0, %(slots)s - 1) AS slot
 ORDER BY provider_id, slot
    ON CONFLICT (provider_id, slot) DO NOTHING
"""

# Free the slots whose lease is still the attempt's: an attempt that outlived its lease may
# find the slot leased by another job (of the same delivery, even), which it must not free.
# Also a CTE of RECORD_ATTEMPTS_SQL, which frees the slots of the attempts it records.
RELEASE_SLOTS_SQL = """
UPDATE delivery_providerslot AS slot
   SET leased_until = now()
  FROM unnest(%(lease_providers)s::bigint[], %(lease_slots)s::integer[],
              %(lease_deliveries)s::bigint[], %(lease_until)s::timestamptz[])
       AS lease(provider_id, slot, delivery_id, until)
 WHERE slot.provider_id = lease.provider_id AND slot.slot = lease.slot
   AND slot.delivery_id = lease.delivery_id AND slot.leased_until = lease.until
"""


@dataclass(frozen=True)
class Lease:
    """A provider slot held by one attempt until ``until`` (the database's clock)."""

    provider_id: int
    slot: int
    delivery_id: int
    until: datetime


def _slot_params() -> dict[str, object]:
    """A provider's number of slots and the length of a lease, as the slot SQL takes them."""
    return {
        "slots": settings.DELIVERY_PER_PROVIDER_CONCURRENCY,
        "lease_seconds": settings.DELIVERY_TIMEOUT_SECONDS + LEASE_MARGIN_SECONDS,
    }


def _lease_params(leases: list[Lease]) -> dict[str, object]:
    """The leases as RELEASE_SLOTS_SQL takes them (one array per column)."""
    return {
        "lease_providers": [lease.provider_id for lease in leases],
        "lease_slots": [lease.slot for lease in leases],
        "lease_deliveries": [lease.delivery_id for lease in leases],
        "lease_until": [lease.until for lease in leases],
    }


def _lease(cursor: Any, wanted: list[tuple[int, int]]) -> dict[int, Lease]:
    cursor.execute(
        ACQUIRE_SLOTS_SQL.format(wanted=WANTED_PARAMS),
        _slot_params()
        | {
            "deliveries": [delivery_id for delivery_id, _ in wanted],
            "providers": [provider_id for _, provider_id in wanted],
        },
    )
    return {
        delivery_id: Lease(provider_id, slot, delivery_id, until)
        for provider_id, slot, delivery_id, until in cursor.fetchall()
    }


def acquire_slots(wanted: list[tuple[int, int]]) -> dict[int, Lease]:
    """Lease one of its provider's DELIVERY_PER_PROVIDER_CONCURRENCY slots for each
    (delivery id, provider id) of ``wanted``; return the leases by delivery id. A delivery left
    out found every slot of its provider leased, by whichever workers.

    One statement when every provider has a free slot; otherwise the missing slot rows are made
    and the rest asked for again, one at a time.
    """
    if not wanted:
        return {}
    with connection.cursor() as cursor:
        leases = _lease(cursor, wanted)
        missing = [pair for pair in wanted if pair[0] not in leases]
        if missing:
            # Every slot leased, the rows missing, or two of the deliveries offered one slot.
            cursor.execute(
                CREATE_SLOTS_SQL,
                _slot_params() | {"providers": sorted({provider for _, provider in missing})},
            )
            for pair in missing:
                leases |= _lease(cursor, [pair])
    return leases


def acquire_slot(provider_id: int, *, delivery_id: int) -> Lease | None:
    """Lease one of the provider's slots for an attempt of the delivery, or None when every one
    of them is leased (acquire_slots for one)."""
    return acquire_slots([(delivery_id, provider_id)]).get(delivery_id)


def release_slot(lease: Lease) -> None:
    """Free the lease's slot now, unless the lease ran out and the slot went to another job."""
    with connection.cursor() as cursor:
        cursor.execute(RELEASE_SLOTS_SQL, _lease_params([lease]))


# --- Attempts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """What one attempt sends, read before the network is touched, and the provider slot it
    runs in (None: every slot of the provider is leased, so the job must wait its turn)."""

    delivery_id: int
    provider_id: int
    channel: str
    body: bytes
    generation: int = 0
    url: str = ""
    secret: str = ""
    email: str = ""
    subject: str = ""
    # Why nothing can be sent, found before the network is touched: the attempt fails with it.
    error: str = ""
    lease: Lease | None = None
    # Without a lease: whether the provider's attempts in flight all started just now (busy:
    # ask again soon), or one has been going on for a while (stuck: postpone at once).
    busy: bool = False


def payload(row: dict[str, Any]) -> dict[str, Any]:
    """The body of a delivery (SPEC: lead.assigned) from its row of START_SQL."""
    return {
        "type": LEAD_ASSIGNED,
        "delivery_id": row["id"],
        "provider_id": row["provider_id"],
        "role": row["role"],
        "rank": row["rank"],
        "lead": {
            "id": row["lead_id"],
            "name": row["name"],
            "phone": row["phone"],
            "city": row["city"],
            "description": row["description"],
            "service": {"id": row["service_id"], "slug": row["slug"], "name": row["service_name"]},
            "created_at": row["created_at"].isoformat(),
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


def _signing_secret(stored: str | None) -> tuple[str, str]:
    """The clear secret of an endpoint's stored one and "", or "" and why it cannot be had."""
    if not stored:
        return "", ""
    try:
        return decrypt_secret(stored), ""
    except UndecryptableSecret:
        # A key removed from DELIVERY_SECRET_KEYS too early: a failed attempt, retried, shows
        # it on the delivery; putting the key back heals the retries.
        return "", "the signing secret is under no key of DELIVERY_SECRET_KEYS"


def _send(row: dict[str, Any]) -> Send:
    data = payload(row)
    lease = None
    if row["slot"] is not None:
        lease = Lease(row["provider_id"], row["slot"], row["id"], row["leased_until"])
    send = Send(
        row["id"],
        row["provider_id"],
        row["channel"],
        json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode(),
        generation=row["generation"],
        lease=lease,
        busy=bool(row["busy"]),
    )
    if row["channel"] == Delivery.Channel.WEBHOOK:
        secret, error = _signing_secret(row["secret"])
        return replace(send, url=row["url"] or "", secret=secret, error=error)
    return replace(
        send,
        email=row["email"] or "",
        subject=f"New lead #{row['lead_id']}: {row['service_name']}",
    )


# A provider whose slots are all leased is busy (its attempts take milliseconds) or stuck (they
# hang until the timeout). A busy one's job asks again after each of these waits, about 0.8 s
# in all, so its attempt goes out as soon as a slot frees, not 5 s or more later. A stuck one's
# (its oldest attempt in flight started over BUSY_NOT_STUCK_SECONDS ago) is postponed at once:
# waiting would hold this worker's slot, which the other providers' attempts need.
SLOT_RETRY_WAITS = (0.02, 0.05, 0.1, 0.2, 0.4)
BUSY_NOT_STUCK_SECONDS = 1.0

# Whether every attempt holding one of the provider's slots started less than %(young)s ago;
# true as well when none is seen holding one (they were all taken as the statement ran).
PROVIDER_BUSY_SQL = """(
SELECT coalesce(min(leased_until), now() + make_interval(secs => %(lease_seconds)s))
       - make_interval(secs => %(lease_seconds)s) > now() - make_interval(secs => %(young)s)
  FROM delivery_providerslot
 WHERE provider_id = {provider} AND slot < %(slots)s AND leased_until > now()
)"""
# How many of its %(slots)s slot rows the provider has (they are made by its first attempt).
PROVIDER_SLOT_ROWS_SQL = """(
SELECT count(*) FROM delivery_providerslot WHERE provider_id = {provider} AND slot < %(slots)s
)"""


# What to send for each due open delivery, read with a slot of its provider leased for it where
# one is free (no slot columns where none is: then ``busy`` says whether to ask again soon or
# to postpone at once): one statement, before the network is touched.
# The endpoint is read now, not at allocation: a changed URL or email applies to every attempt
# made after the change. {due} picks the deliveries (DUE_FOR_LEAD, DUE_FOR_JOB).
START_SQL = f"""
WITH due AS (
    SELECT delivery.id, delivery.provider_id, delivery.channel, delivery.role, delivery.rank,
           delivery.generation, lead.id AS lead_id, lead.name, lead.phone, lead.city,
           lead.description, lead.created_at, service.id AS service_id, service.slug,
           service.name AS service_name, endpoint.url, endpoint.email, endpoint.secret
      FROM delivery_delivery AS delivery
      JOIN allocation_lead AS lead ON lead.id = delivery.lead_id
      JOIN providers_service AS service ON service.id = lead.service_id
      LEFT JOIN delivery_endpoint AS endpoint ON endpoint.provider_id = delivery.provider_id
     WHERE delivery.status IN ('pending', 'retrying') AND {{due}}
),
leased AS ({ACQUIRE_SLOTS_SQL.format(wanted="(SELECT id, provider_id FROM due)")})
SELECT due.*, leased.slot, leased.leased_until,
       leased.slot IS NULL AND {PROVIDER_BUSY_SQL.format(provider="due.provider_id")} AS busy,
       {PROVIDER_SLOT_ROWS_SQL.format(provider="due.provider_id")} AS slot_rows
  FROM due LEFT JOIN leased ON leased.delivery_id = due.id
 ORDER BY due.id
"""
# The lead's deliveries not attempted yet, in their first generation (the lead's job).
DUE_FOR_LEAD = """delivery.lead_id = %(lead)s AND delivery.generation = 0
       AND delivery.attempts = 0 AND delivery.status = 'pending'"""
# One delivery, if still in the job's generation and, for a scheduled retry, not attempted
# since the job was deferred (attempt NULL: any).
DUE_FOR_JOB = """delivery.id = %(delivery)s AND delivery.generation = %(generation)s
       AND (%(attempt)s::integer IS NULL OR delivery.attempts = %(attempt)s)"""
START_FOR_LEAD_SQL = START_SQL.format(due=DUE_FOR_LEAD)
START_FOR_JOB_SQL = START_SQL.format(due=DUE_FOR_JOB)


def _start(sql: str, params: dict[str, object]) -> list[Send]:
    """What to send for each delivery ``sql`` (a START_SQL) picks, each with a slot of its provider
    leased for it if one was free. A delivery without one asks again (acquire_slots) only when
    that can help: its provider's slot rows are missing, or two of its deliveries were offered
    one slot. Otherwise every slot is leased by others, and nothing more is asked here."""
    busy = {"young": BUSY_NOT_STUCK_SECONDS}
    with connection.cursor() as cursor:
        cursor.execute(sql, _slot_params() | busy | params)
        columns = [column.name for column in cursor.description]
        rows = [dict(zip(columns, values, strict=True)) for values in cursor.fetchall()]
    per_provider = Counter(row["provider_id"] for row in rows)
    again = [
        (row["id"], row["provider_id"])
        for row in rows
        if row["slot"] is None
        and (
            row["slot_rows"] < settings.DELIVERY_PER_PROVIDER_CONCURRENCY
            or per_provider[row["provider_id"]] > 1
        )
    ]
    for delivery_id, lease in acquire_slots(again).items():
        row = next(row for row in rows if row["id"] == delivery_id)
        row.update(slot=lease.slot, leased_until=lease.until)
    return [_send(row) for row in rows]


def start_attempt(delivery_id: int, *, generation: int, attempt: int | None) -> Send | None:
    """What to send for this job, with a slot of its provider leased for it if one is free
    (Send.lease); None when the job has nothing to do any more (and then no slot is taken)."""
    params = {"delivery": delivery_id, "generation": generation, "attempt": attempt}
    sends = _start(START_FOR_JOB_SQL, params)
    return sends[0] if sends else None


def start_lead_attempts(lead_id: int) -> list[Send]:
    """start_attempt for each of the lead's first attempts still due, oldest first."""
    return _start(START_FOR_LEAD_SQL, {"lead": lead_id})


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

# Seconds before the next try of a delivery that has failed {failures} + 1 times: exponential
# from DELIVERY_RETRY_BASE_SECONDS, capped at DELIVERY_RETRY_MAX_SECONDS, with jitter (half of
# it random) so that endpoints coming back are not hit by every retry at once.
RETRY_DELAY_SQL = (
    "least(%(retry_base)s * power(2, least({failures}, 30)), %(retry_max)s) * (0.5 + random() / 2)"
)

_NEXT_TRY_DELAY = RETRY_DELAY_SQL.format(failures="b.attempts")

# Attempts recorded, all in one statement: each delivery moves on (delivered; retrying, with
# its next job deferred through procrastinate_defer_jobs_v1 as the allocation statement defers
# its own; or failed once retried for DELIVERY_RETRY_HOURS, or at once when ``final``: no
# endpoint any more), its attempt is logged, its event written (left out for a repeated failure
# past the first few), and its provider slot freed. An attempt whose delivery a resend moved to
# a new generation meanwhile is logged without moving it: the new generation's job carries on.
#
# Locks: the deliveries' rows in id order (as resend_deliveries takes them), and the slots'
# rows, which a lease holds only for its own statement and waits for nothing meanwhile.
RECORD_ATTEMPTS_SQL = f"""
WITH outcome AS (
    SELECT *
      FROM unnest(%(deliveries)s::bigint[], %(generations)s::integer[],
                  %(succeeded)s::boolean[], %(status_codes)s::integer[],
                  %(latencies)s::integer[], %(errors)s::text[], %(started)s::timestamptz[],
                  %(final)s::boolean[])
           AS o(delivery_id, generation, succeeded, status_code, latency_ms, error,
                started_at, final)
),
before AS (
    SELECT id, lead_id, provider_id, channel, status, attempts, generation, retrying_since,
           next_attempt_at, delivered_at
      FROM delivery_delivery
     WHERE id = ANY(%(deliveries)s::bigint[])
     ORDER BY id
       FOR UPDATE
),
next AS (
    SELECT b.id, b.lead_id, b.provider_id, b.channel, b.status AS previous_status,
           b.attempts + 1 AS attempts, o.generation, o.succeeded, o.status_code, o.latency_ms,
           o.error, o.started_at, since.retrying_since, verdict.status,
           run.current AND verdict.status = 'retrying' AS retry,
           CASE WHEN o.succeeded THEN NULL
                WHEN NOT run.current THEN b.next_attempt_at
                WHEN verdict.status = 'failed' THEN NULL
                ELSE %(now)s + make_interval(secs => {_NEXT_TRY_DELAY})
           END AS next_attempt_at,
           CASE WHEN o.succeeded THEN %(now)s ELSE b.delivered_at END AS delivered_at
      FROM before AS b
      JOIN outcome AS o ON o.delivery_id = b.id
     CROSS JOIN LATERAL (
           SELECT b.generation = o.generation AND b.status IN ('pending', 'retrying') AS current
     ) AS run
     CROSS JOIN LATERAL (
           SELECT CASE WHEN run.current THEN coalesce(b.retrying_since, o.started_at)
                       ELSE b.retrying_since END AS retrying_since
     ) AS since
     CROSS JOIN LATERAL (
           SELECT CASE WHEN o.succeeded THEN 'delivered'
                       WHEN NOT run.current THEN b.status
                       WHEN o.final
                         OR %(now)s - since.retrying_since >= make_interval(secs => %(window)s)
                       THEN 'failed'
                       ELSE 'retrying' END AS status
     ) AS verdict
),
moved AS (
    UPDATE delivery_delivery AS delivery
       SET status = next.status, attempts = next.attempts,
           last_status_code = next.status_code, last_latency_ms = next.latency_ms,
           last_error = next.error, retrying_since = next.retrying_since,
           next_attempt_at = next.next_attempt_at, delivered_at = next.delivered_at,
           updated_at = %(now)s
      FROM next
     WHERE delivery.id = next.id
),
logged AS (
    INSERT INTO delivery_attempt (delivery_id, number, started_at, succeeded, status_code,
                                  latency_ms, error)
    SELECT id, attempts, started_at, succeeded, status_code, latency_ms, error FROM next
),
announced AS (
    INSERT INTO events_event (type, data, created_at)
    SELECT %(event)s,
           jsonb_build_object('delivery_id', id, 'lead_id', lead_id, 'provider_id', provider_id,
                              'channel', channel, 'status', status, 'attempts', attempts),
           %(now)s
      FROM next
     WHERE status <> previous_status
        OR attempts <= %(announce_first)s
        OR mod(attempts, %(announce_every)s) = 0
    RETURNING id
),
released AS ({RELEASE_SLOTS_SQL}),
-- A plain SELECT runs only when the final SELECT reads it, which it does.
retries AS (
    SELECT procrastinate_defer_jobs_v1(array_agg(
               ROW(%(job_queue)s, %(job_task)s, 0, NULL, NULL,
                   jsonb_build_object('delivery_id', id, 'generation', generation,
                                      'attempt', attempts),
                   next_attempt_at)::procrastinate_job_to_defer_v1 ORDER BY id)) AS ids
      FROM next
     WHERE retry
    HAVING count(*) > 0
)
SELECT next.id, next.status, (SELECT count(*) FROM announced)
  FROM next LEFT JOIN retries ON true
"""

# The task of one attempt's job (a retry, a postpone, a resend), deferred in SQL here as well as
# through procrastinate; delivery/tasks.py registers it under this name.
ATTEMPT_JOB_TASK = "deliver"


@dataclass(frozen=True)
class Record:
    """One attempt to record: its delivery (in the generation its job was for), how it went,
    and the provider slot it ran in. ``final``: the failure cannot heal by retrying."""

    delivery_id: int
    generation: int
    outcome: Outcome
    started_at: datetime
    final: bool = False
    lease: Lease | None = None


def record_attempts(records: list[Record]) -> dict[int, str]:
    """Record the attempts (RECORD_ATTEMPTS_SQL), at most one per delivery; return each
    delivery's status afterwards by id (a delivery deleted meanwhile is left out, and its slot
    freed all the same). All or nothing, in one statement: one round trip, one commit."""
    if len({record.delivery_id for record in records}) != len(records):
        raise ValueError("two attempts of one delivery cannot be recorded in one statement")
    outcomes = [record.outcome for record in records]
    params = {
        "deliveries": [record.delivery_id for record in records],
        "generations": [record.generation for record in records],
        "succeeded": [outcome.succeeded for outcome in outcomes],
        "status_codes": [outcome.status_code for outcome in outcomes],
        "latencies": [outcome.latency_ms for outcome in outcomes],
        "errors": [outcome.error for outcome in outcomes],
        "started": [record.started_at for record in records],
        "final": [record.final for record in records],
        "now": timezone.now(),
        "window": settings.DELIVERY_RETRY_HOURS * 3600,
        "retry_base": settings.DELIVERY_RETRY_BASE_SECONDS,
        "retry_max": settings.DELIVERY_RETRY_MAX_SECONDS,
        "event": DELIVERY_UPDATED,
        "announce_first": ANNOUNCE_FIRST_ATTEMPTS,
        "announce_every": ANNOUNCE_EVERY_ATTEMPTS,
        "job_queue": DELIVERY_JOB_QUEUE,
        "job_task": ATTEMPT_JOB_TASK,
    } | _lease_params([record.lease for record in records if record.lease is not None])
    with connection.cursor() as cursor:
        cursor.execute(RECORD_ATTEMPTS_SQL, params)
        rows = cursor.fetchall()
    if rows and rows[0][2]:
        announce_after_commit()
    return {delivery_id: status for delivery_id, status, _ in rows}


def record_attempt(
    delivery_id: int,
    outcome: Outcome,
    *,
    generation: int,
    started_at: datetime,
    final: bool = False,
    lease: Lease | None = None,
) -> str | None:
    """Record one attempt (record_attempts); return the delivery's status, None if it is gone."""
    record = Record(delivery_id, generation, outcome, started_at, final, lease)
    return record_attempts([record]).get(delivery_id)


# The most attempts one statement records: a burst's batches stay well under it, and a backlog
# after an outage goes in a few statements of bounded size.
RECORD_BATCH_MAX = 100


def _batch(
    waiting: list[tuple[Record, asyncio.Future[str]]],
) -> tuple[list[tuple[Record, asyncio.Future[str]]], list[tuple[Record, asyncio.Future[str]]]]:
    """The next batch to record (at most one attempt per delivery), and what waits after it."""
    batch, rest, seen = [], [], set()
    for item in waiting:
        if item[0].delivery_id in seen or len(batch) == RECORD_BATCH_MAX:
            rest.append(item)
        else:
            seen.add(item[0].delivery_id)
            batch.append(item)
    return batch, rest


class AttemptRecorder:
    """Records the attempts of one event loop's jobs, many in one statement.

    A worker runs up to DELIVERY_CONCURRENCY attempts at once. Each recorded on its own cost a
    transaction and a commit, and commits carrying events pass one at a time (the event log's
    seq, events/migrations/0002): under a burst, the worker's commits queued with intake's.
    Here an attempt waits while the statement before it runs, then goes with all the others
    that finished meanwhile: one statement and one commit per batch. Each job still waits for
    its own attempt's record, and sees its error if the statement fails.
    """

    def __init__(self) -> None:
        self._waiting: list[tuple[Record, asyncio.Future[str]]] = []
        self._recording: asyncio.Task[None] | None = None

    async def record(self, record: Record) -> str:
        """Record the attempt with the others waiting; return its delivery's status then
        ("gone" if the delivery was deleted meanwhile)."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting.append((record, future))
        if self._recording is None or self._recording.done():
            self._recording = asyncio.create_task(self._record_waiting())
        return await future

    async def _record_waiting(self) -> None:
        while self._waiting:
            batch, self._waiting = _batch(self._waiting)
            try:
                statuses = await _in_thread(record_attempts)([record for record, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            except BaseException:
                for _, future in batch + self._waiting:
                    future.cancel()
                raise
            for record, future in batch:
                if not future.done():
                    future.set_result(statuses.get(record.delivery_id, "gone"))


# The running event loop's recorder.
_recorder = per_loop(AttemptRecorder)


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


# A busy provider's job (every slot held by an attempt that started just now, still so after
# SLOT_RETRY_WAITS) waits this instead of the timeout, times the same factor: its attempts end
# in milliseconds, so a slot frees long before a timeout would have passed.
BUSY_POSTPONE_SECONDS = 1.0


def postpone_wait(postponed: int, *, busy: bool = False) -> float:
    """Seconds a job waits before it tries again, when it finds its provider's slots all leased
    after ``postponed`` earlier postpones; shorter when the provider is ``busy``, not stuck."""
    base = settings.DELIVERY_TIMEOUT_SECONDS
    if busy:
        base = min(BUSY_POSTPONE_SECONDS, base)
    factor = min(2**postponed, POSTPONE_MAX_FACTOR)
    return base * factor * random.uniform(*POSTPONE_JITTER)


# The delivery's next_attempt_at moved to %(at)s and the same job deferred again for then, one
# postpone more, in one statement; nothing if the delivery moved on meanwhile (attempted,
# resent, or closed). next_attempt_at follows the job: the admin shows when it comes back, and
# a delivery whose provider hangs for longer than STUCK_AFTER is not taken for one that lost
# its job (resume_stuck would give it a second one at each pass).
POSTPONE_SQL = """
WITH moved AS (
    UPDATE delivery_delivery
       SET next_attempt_at = %(at)s
     WHERE id = %(delivery)s AND generation = %(generation)s
       AND status IN ('pending', 'retrying')
       AND (%(attempt)s::integer IS NULL OR attempts = %(attempt)s)
    RETURNING id
)
SELECT procrastinate_defer_jobs_v1(ARRAY[
           ROW(%(job_queue)s, %(job_task)s, 0, NULL, NULL, %(args)s::jsonb,
               %(at)s)::procrastinate_job_to_defer_v1])
  FROM moved
"""


def postpone(
    delivery_id: int, *, generation: int, attempt: int | None, postponed: int, busy: bool = False
) -> None:
    """The same job again later (postpone_wait), counted as one more postpone, not as an attempt;
    nothing if the delivery moved on meanwhile (POSTPONE_SQL)."""
    at = timezone.now() + timedelta(seconds=postpone_wait(postponed, busy=busy))
    args = {
        "delivery_id": delivery_id,
        "generation": generation,
        "attempt": attempt,
        "postponed": postponed + 1,
    }
    params = {
        "at": at,
        "delivery": delivery_id,
        "generation": generation,
        "attempt": attempt,
        "job_queue": DELIVERY_JOB_QUEUE,
        "job_task": ATTEMPT_JOB_TASK,
        "args": json.dumps(args),
    }
    with connection.cursor() as cursor:
        cursor.execute(POSTPONE_SQL, params)


async def _wait_for_slot(send: Send) -> Send:
    """``send`` with a lease taken within SLOT_RETRY_WAITS if its provider is busy, not stuck;
    else still without one."""
    if not send.busy:
        return send
    for wait in SLOT_RETRY_WAITS:
        await asyncio.sleep(wait)
        lease = await _in_thread(acquire_slot)(send.provider_id, delivery_id=send.delivery_id)
        if lease is not None:
            return replace(send, lease=lease)
    return send


async def _run(send: Send, *, attempt: int | None, postponed: int) -> str:
    """Make the attempt in a slot of its provider; return the delivery's status afterwards, or
    "postponed": the provider's DELIVERY_PER_PROVIDER_CONCURRENCY slots are all leased, by
    attempts of any worker on any host, so the job is deferred again (later each time). A
    provider whose endpoint hangs holds that many attempts in all, and every other provider's
    deliveries go on in the workers' other slots."""
    if send.lease is None:
        send = await _wait_for_slot(send)
    if send.lease is None:
        await _in_thread(postpone)(
            send.delivery_id,
            generation=send.generation,
            attempt=attempt,
            postponed=postponed,
            busy=send.busy,
        )
        return "postponed"
    try:
        return await _attempt(send)
    except BaseException:
        # The attempt was not recorded (recording frees the slot): free it now, not at expiry.
        # If that fails too (the database is gone), the lease still runs out.
        with contextlib.suppress(Exception):
            await _in_thread(release_slot)(send.lease)
        raise


async def attempt_delivery(
    delivery_id: int, *, generation: int, attempt: int | None, postponed: int = 0
) -> str:
    """Run one attempt of the delivery (_run) if its job still has one to make; "skipped" if not."""
    send = await _in_thread(start_attempt)(delivery_id, generation=generation, attempt=attempt)
    if send is None:
        return "skipped"
    return await _run(send, attempt=attempt, postponed=postponed)


async def deliver_lead(lead_id: int) -> list[str]:
    """The first attempt of each of the lead's deliveries, all at once; return their statuses.

    The allocation statement deferred this one job for the whole lead (allocation/services.py):
    one job to fetch and finish per lead, not one per delivery, which is what bounds a worker's
    rate (procrastinate fetches its jobs one at a time), and one read and one lease statement
    for all its deliveries. A provider at its concurrency limit gets a job of its own instead
    of an attempt here (_run postpones it), so a provider whose endpoint hangs holds this job's
    slot only while it has a free one of its own. Run twice (its worker died), it attempts only
    what was not attempted yet; an attempt cut off by the death is sent again, under the same
    webhook-id.
    """
    sends = await _in_thread(start_lead_attempts)(lead_id)
    return list(await asyncio.gather(*(_run(send, attempt=0, postponed=0) for send in sends)))


async def _attempt(send: Send) -> str:
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
    record = Record(delivery_id, send.generation, outcome, started_at, final, send.lease)
    return await _recorder().record(record)


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
