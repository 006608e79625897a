"""Reads of deliveries shared by the API and the admin."""

from __future__ import annotations

from typing import Any

from delivery.models import Delivery


def lead_deliveries(lead_id: int) -> list[dict[str, Any]]:
    """The lead's deliveries as the read API shows them, by provider rank then channel: one
    query."""
    return list(
        Delivery.objects.filter(lead_id=lead_id)
        .order_by("rank", "channel")
        .values(
            "id", "provider_id", "channel", "status", "attempts", "last_status_code", "updated_at"
        )
    )
