"""Reads of returns shared by the read API, the portal and the dashboard."""

from __future__ import annotations

from typing import Any

from returns.models import Return

RETURN_FIELDS = ("id", "provider_id", "reason", "note", "status", "created_at", "decided_at")


def lead_returns(lead_id: int) -> list[dict[str, Any]]:
    """The lead's returns as the read API shows them, oldest first: one query."""
    return list(Return.objects.filter(lead_id=lead_id).order_by("pk").values(*RETURN_FIELDS))


def provider_returns(provider_id: int, lead_ids: list[int]) -> dict[int, dict[str, Any]]:
    """This provider's returns of these leads, by lead id: one query."""
    rows = Return.objects.filter(provider_id=provider_id, lead_id__in=lead_ids).values(
        "lead_id", *RETURN_FIELDS
    )
    return {row.pop("lead_id"): row for row in rows}
