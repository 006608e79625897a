"""Reads of deliveries shared by the API, the admin and the dashboard."""

from __future__ import annotations

from typing import Any

from django.db import connection

from delivery import sql
from delivery.models import Delivery


def lead_deliveries(lead_id: int) -> list[dict[str, Any]]:
    """The lead's deliveries as the read API shows them, by provider rank then channel: one
    query."""
    return list(
        Delivery.objects.filter(lead_id=lead_id)
        .order_by("rank", "channel")
        .values(
            "id",
            "provider_id",
            "channel",
            "status",
            "attempts",
            "last_status_code",
            "last_error",
            "next_attempt_at",
            "updated_at",
        )
    )


def provider_lead_deliveries(
    provider_id: int, lead_ids: list[int]
) -> dict[int, list[dict[str, Any]]]:
    """Each of these leads' deliveries to this one provider (channel, status, attempts,
    updated_at), by channel; a lead with none maps to []. One query, whatever the number of
    leads (the unique (lead, provider, channel) index serves it)."""
    found: dict[int, list[dict[str, Any]]] = {lead_id: [] for lead_id in lead_ids}
    rows = (
        Delivery.objects.filter(provider_id=provider_id, lead_id__in=lead_ids)
        .order_by("lead_id", "channel")
        .values("lead_id", "channel", "status", "attempts", "updated_at")
    )
    for row in rows:
        found[row.pop("lead_id")].append(row)
    return found


def recent_latency(*, window: int = 300) -> tuple[float | None, float | None, int]:
    """Speed to lead over the last ``window`` seconds: p50 and p99 of allocation to delivery
    (seconds; None when nothing was delivered), and how many deliveries."""
    with connection.cursor() as cursor:
        cursor.execute(sql.RECENT_LATENCY, {"window": window})
        p50, p99, count = cursor.fetchone()
    return p50, p99, count


def delivery_rates(provider_ids: list[int], *, window: int) -> dict[int, tuple[int, int]]:
    """(delivered, finished) of each provider's last ``window`` finished deliveries (delivered
    or failed); a provider with none is left out. One query, through the (provider, -id) index:
    the work does not grow with a provider's history."""
    if not provider_ids:
        return {}
    with connection.cursor() as cursor:
        rows = sql.fetch(
            cursor, sql.PROVIDER_DELIVERY_RATES, {"ids": provider_ids, "window": window}
        )
    return {pid: (delivered, finished) for pid, delivered, finished in rows}
