"""Fixtures and helpers shared by the dashboard, SSE, test-tools and browser tests."""

from __future__ import annotations

import json

from django_eventstream.utils import get_storage

from allocation.events import CHANNEL
from allocation.services import LeadInput

STAFF_PASSWORD = "staff-pass-123"


def lead_input(service_id: int = 1, *, phone: str = "+15550000001", **fields) -> LeadInput:
    return LeadInput(
        service_id=service_id,
        name=fields.pop("name", "Ada Lovelace"),
        phone=phone,
        city=fields.pop("city", "London"),
        **fields,
    )


def stream_position() -> int:
    return get_storage().get_current_id(CHANNEL)


def published_since(position: int) -> list[tuple[str, dict]]:
    """(type, data) of every event stored after ``position``, oldest first."""
    events = get_storage().get_events(CHANNEL, position)
    # DjangoModelStorage hands back the JSON text that send_event encoded.
    return [(event.type, json.loads(event.data)) for event in events]
