"""One attempt of a delivery: what it sends (read by the claim), sending it, and recording it.

A claimed delivery becomes a :class:`Send`: the signed body is built once, from what the claim
read (the lead, its service, the endpoint as it is now: a changed URL or email applies to every
attempt made after the change). :func:`attempt` sends it, touching no database, and
:func:`record_attempts` records many attempts in one statement (delivery/sql.py, RECORD).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from delivery import sql
from delivery.encryption import UndecryptableSecret, decrypt_secret
from delivery.models import Attempt, Delivery
from delivery.sending import Outcome, post_webhook, send_email
from events.services import announce_after_commit
from events.types import DELIVERY_UPDATED
from leaddist.http.metrics import DELIVERY_ATTEMPTS, DELIVERY_LATENCY

logger = logging.getLogger(__name__)

LEAD_ASSIGNED = "lead.assigned"

# While a delivery keeps failing, its delivery.updated events: every status change, the first
# few attempts, then every Nth attempt only (up to ~50 attempts over DELIVERY_RETRY_HOURS).
ANNOUNCE_FIRST_ATTEMPTS = 3
ANNOUNCE_EVERY_ATTEMPTS = 10


@dataclass(frozen=True, slots=True)
class Send:
    """What one attempt sends, read before the network is touched."""

    delivery_id: int
    provider_id: int
    lead_id: int
    channel: str
    generation: int
    # When the lead was allocated (the delivery row's creation, in the allocation's
    # transaction): speed to lead is measured from it.
    allocated_at: datetime
    body: bytes
    url: str = ""
    secret: str = ""
    email: str = ""
    subject: str = ""
    # Why nothing can be sent, found before the network is touched: the attempt fails with it.
    error: str = ""


def payload(
    row: tuple, *, delivery_id: int, provider_id: int, role: str, rank: int
) -> dict[str, Any]:
    """The body of a delivery (SPEC §8, lead.assigned)."""
    lead_id, name, phone, city, description, created_at, service_id, slug, service_name = row
    return {
        "type": LEAD_ASSIGNED,
        "delivery_id": delivery_id,
        "provider_id": provider_id,
        "role": role,
        "rank": rank,
        "lead": {
            "id": lead_id,
            "name": name,
            "phone": phone,
            "city": city,
            "description": description,
            "service": {"id": service_id, "slug": slug, "name": service_name},
            "created_at": created_at.isoformat(),
        },
    }


def email_text(data: dict[str, Any]) -> str:
    lead = data["lead"]
    return (
        f"A new lead for {lead['service']['name']}:\n\n"
        f"Name: {lead['name']}\nPhone: {lead['phone']}\nCity: {lead['city']}\n"
        f"Description: {lead['description'] or '-'}\n\n"
        f"Lead #{lead['id']}, received {lead['created_at']}; you are provider "
        f"#{data['provider_id']} ({data['role']}, rank {data['rank']}).\n"
        f"Delivery #{data['delivery_id']}.\n"
    )


def signing_secret(stored: str | None) -> tuple[str, str]:
    """The clear secret of an endpoint's stored one and "", or "" and why it cannot be had."""
    if not stored:
        return "", ""
    try:
        return decrypt_secret(stored), ""
    except UndecryptableSecret:
        # A key removed from DELIVERY_SECRET_KEYS too early: a failed attempt, retried, shows
        # it on the delivery; putting the key back heals the retries.
        return "", "the signing secret is under no key of DELIVERY_SECRET_KEYS"


def send_from_claim(row: tuple) -> Send:
    """A row of sql.CLAIM as the Send its attempt makes."""
    delivery_id, provider_id, channel, role, rank, generation, allocated_at = row[:7]
    lead, (url, email, secret) = row[7:16], row[16:19]
    data = payload(lead, delivery_id=delivery_id, provider_id=provider_id, role=role, rank=rank)
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    common = {
        "delivery_id": delivery_id,
        "provider_id": provider_id,
        "lead_id": lead[0],
        "channel": channel,
        "generation": generation,
        "allocated_at": allocated_at,
        "body": body,
    }
    if channel == Delivery.Channel.WEBHOOK:
        clear, error = signing_secret(secret)
        return Send(**common, url=url or "", secret=clear, error=error)
    return Send(**common, email=email or "", subject=f"New lead #{lead[0]}: {lead[8]}")


@dataclass(frozen=True, slots=True)
class Record:
    """One attempt to record: its delivery (in the generation it was made for) and how it went.
    ``final``: the failure cannot heal by retrying."""

    delivery_id: int
    generation: int
    outcome: Outcome
    started_at: datetime
    final: bool = False


async def attempt(send: Send) -> Record:
    """Make the attempt over the network (no database); return it as a Record."""
    started_at = timezone.now()
    final = False
    if send.error:
        outcome = Outcome(False, 0, error=send.error, kind="refused")
    elif send.channel == Delivery.Channel.WEBHOOK and send.url:
        outcome = await post_webhook(
            send.url, send.body, secret=send.secret, webhook_id=str(send.delivery_id)
        )
    elif send.channel == Delivery.Channel.EMAIL and send.email:
        text = email_text(json.loads(send.body))
        outcome = await send_email(
            send.email, subject=send.subject, text=text, delivery_id=send.delivery_id
        )
    else:
        error = f"the provider has no {send.channel} endpoint any more"
        outcome = Outcome(False, 0, error=error, kind="no_endpoint")
        final = True
    observe(send, outcome)
    return Record(send.delivery_id, send.generation, outcome, started_at, final)


def observe(send: Send, outcome: Outcome) -> None:
    """Count the attempt in /metrics, and log a failure at WARNING with its reason."""
    DELIVERY_ATTEMPTS.labels(outcome.outcome_kind).inc()
    if outcome.succeeded:
        DELIVERY_LATENCY.observe(max(0.0, time.time() - send.allocated_at.timestamp()))
        return
    logger.warning(
        "delivery #%d of lead #%d to provider #%d (%s) failed: %s",
        send.delivery_id,
        send.lead_id,
        send.provider_id,
        send.channel,
        outcome.error or outcome.outcome_kind,
    )


def record_attempts(records: list[Record], *, worker_id: int | None = None) -> dict[int, str]:
    """Record the attempts (sql.RECORD), at most one per delivery; return each delivery's status
    afterwards by id (a delivery deleted meanwhile is left out). All or nothing, in one
    statement: one round trip, one commit. ``worker_id``: the worker that made them."""
    if len({record.delivery_id for record in records}) != len(records):
        raise ValueError("two attempts of one delivery cannot be recorded in one statement")
    if not records:
        return {}
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
        "worker": worker_id,
        "now": timezone.now(),
        "window": settings.DELIVERY_RETRY_HOURS * 3600,
        "retry_base": settings.DELIVERY_RETRY_BASE_SECONDS,
        "retry_max": settings.DELIVERY_RETRY_MAX_SECONDS,
        "event": DELIVERY_UPDATED,
        "announce_first": ANNOUNCE_FIRST_ATTEMPTS,
        "announce_every": ANNOUNCE_EVERY_ATTEMPTS,
    }
    with connection.cursor() as cursor:
        rows = sql.fetch(cursor, sql.RECORD, params)
    if rows and rows[0][2]:
        announce_after_commit()
    return {delivery_id: status for delivery_id, status, _ in rows}


def already_recorded(records: list[Record]) -> set[int]:
    """The deliveries of ``records`` whose attempt is in the log already: asked before a batch
    is recorded again after its connection was lost, which may have been at its commit."""
    wanted = {(record.delivery_id, record.started_at) for record in records}
    logged = Attempt.objects.filter(
        delivery_id__in=[record.delivery_id for record in records]
    ).values_list("delivery_id", "started_at")
    return {
        delivery_id for delivery_id, started_at in logged if (delivery_id, started_at) in wanted
    }
