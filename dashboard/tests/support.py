"""Fixtures and helpers shared by the dashboard, SSE, test-tools and browser tests."""

from __future__ import annotations

from allocation.services import LeadInput
from events.tests.support import published_since, settle_events, stream_position

__all__ = ["STAFF_PASSWORD", "lead_input", "published_since", "settle_events", "stream_position"]

STAFF_PASSWORD = "staff-pass-123"


def lead_input(service_id: int = 1, *, phone: str = "+15550000001", **fields) -> LeadInput:
    return LeadInput(
        service_id=service_id,
        name=fields.pop("name", "Ada Lovelace"),
        phone=phone,
        city=fields.pop("city", "London"),
        **fields,
    )
