"""The dashboard's live events (SPEC §6), published over SSE through django-eventstream.

Every event is sent from ``transaction.on_commit(..., robust=True)``:

- a write that rolls back never appears on screen;
- a failure to publish is logged and never turns a committed lead or reset into an error.

Events are small JSON objects of ids and numbers; the page fetches server-rendered fragments
for whatever they name. Consumers derive quota changes themselves: each provider of a
``lead.allocated`` lost one unit, and the providers of a ``quota.reset`` (``null``: all of
them) are back to their full quota. ``provider.updated`` is sent when the catalogue changes a
provider (status, quota or name, e.g. in the admin).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.dispatch import receiver
from django_eventstream import send_event
from django_eventstream.eventstream import get_current_event_id

from providers.signals import provider_changed

logger = logging.getLogger(__name__)

CHANNEL = "dashboard"

LEAD_ALLOCATED = "lead.allocated"
LEAD_WAITING = "lead.waiting"
QUOTA_RESET = "quota.reset"
PROVIDER_UPDATED = "provider.updated"
EVENT_TYPES = (LEAD_ALLOCATED, LEAD_WAITING, QUOTA_RESET, PROVIDER_UPDATED)
# The types the dashboard's live feed lists; provider.updated only refreshes a row.
FEED_TYPES = (LEAD_ALLOCATED, LEAD_WAITING, QUOTA_RESET)


def publish(event_type: str, data: dict[str, Any]) -> None:
    """Store the event and wake the open streams (through Redis when REDIS_URL is set)."""
    send_event(CHANNEL, event_type, data)


def publish_on_commit(event_type: str, data: dict[str, Any]) -> None:
    """Publish once the current transaction commits; right away outside a transaction."""

    # A function, not functools.partial: robust on_commit logs a failure by __qualname__.
    def publish_event() -> None:
        publish(event_type, data)

    transaction.on_commit(publish_event, robust=True)


def lead_stored(
    *, lead_id: int, service_id: int, status: str, provider_ids: Iterable[int] = ()
) -> None:
    """Announce a lead the engine allocated or left waiting; call inside its transaction."""
    if status == "allocated":
        publish_on_commit(
            LEAD_ALLOCATED,
            {
                "lead_id": lead_id,
                "service_id": service_id,
                "provider_ids": list(provider_ids),
                "status": status,
            },
        )
    else:
        publish_on_commit(LEAD_WAITING, {"lead_id": lead_id, "service_id": service_id})


def quota_reset(
    *, event_id: str, provider_ids: Iterable[int] | None, leads_allocated: int | None
) -> None:
    """Announce an applied quota reset; ``provider_ids`` None means every provider."""
    publish_on_commit(
        QUOTA_RESET,
        {
            "event_id": event_id,
            "provider_ids": None if provider_ids is None else sorted(provider_ids),
            "leads_allocated": leads_allocated,
        },
    )


@receiver(provider_changed)
def provider_updated(
    sender: object,
    provider_id: int,
    status: str,
    quota: int,
    remaining_quota: int,
    **kwargs: object,
) -> None:
    """The catalogue changed a provider (sent after its commit): tell the dashboards."""
    publish_on_commit(
        PROVIDER_UPDATED,
        {
            "provider_id": provider_id,
            "status": status,
            "quota": quota,
            "remaining_quota": remaining_quota,
        },
    )


def current_event_id() -> str:
    """The stream position to resume from, as in Last-Event-ID (e.g. ``dashboard:42``)."""
    return get_current_event_id([CHANNEL])
