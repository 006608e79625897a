"""django-eventstream's storage API over leaddist's own event log (EVENTSTREAM_STORAGE_CLASS).

leaddist streams with its own hub (events.hub), but keeps django-eventstream's public API
truthful on the same log: ``get_current_event_id``, ``get_events`` and ``send_event`` all
read and write ``events.Event``, positions included.
"""

from __future__ import annotations

import json
from typing import Any

from django.db import transaction
from django_eventstream.event import Event as StreamEvent
from django_eventstream.storage import EventDoesNotExist, StorageBase

from events.hub import current_position, trimmed_through
from events.models import Event
from events.services import record_event
from events.types import CHANNEL


class EventLogStorage(StorageBase):
    def append_event(self, channel: str, event_type: str, data: Any) -> StreamEvent:
        """Record an event in its own transaction; its position is known once committed."""
        if channel != CHANNEL:
            raise ValueError(f"leaddist streams one channel, {CHANNEL!r}.")
        payload = json.loads(data) if isinstance(data, str) else data
        with transaction.atomic():
            event = record_event(event_type, payload)
        event.refresh_from_db(fields=["seq"])
        return StreamEvent(channel, event_type, payload, id=event.seq)

    def get_events(self, channel: str, last_id: int, limit: int = 100) -> list[StreamEvent]:
        current = current_position()
        if last_id > current or last_id < trimmed_through():
            raise EventDoesNotExist(f"No event {last_id} in the log.", current)
        if channel != CHANNEL:
            return []
        rows = Event.objects.published().filter(seq__gt=last_id)[:limit]
        return [StreamEvent(channel, row.type, row.data, id=row.seq) for row in rows]

    def get_current_id(self, channel: str) -> int:
        return current_position() if channel == CHANNEL else 0
