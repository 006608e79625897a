"""Helpers for tests that read the event log."""

from __future__ import annotations

from typing import Any

from django.db import connection

from events.models import Event


def settle_events() -> None:
    """Give the current test transaction's events their stream positions, as a commit would.

    Tests on pytest-django's ``db`` fixture run in a transaction that is rolled back, so the
    deferred trigger that numbers events at commit never fires; this fires it now.
    """
    if connection.in_atomic_block:
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS events_event_seq_at_commit IMMEDIATE")
            cursor.execute("SET CONSTRAINTS events_event_seq_at_commit DEFERRED")


def stream_position() -> int:
    """The latest stream position."""
    settle_events()
    return Event.objects.published().order_by("-seq").values_list("seq", flat=True).first() or 0


def published_since(position: int) -> list[tuple[str, dict[str, Any]]]:
    """(type, data) of every event after ``position`` in stream order."""
    settle_events()
    return [
        (event.type, event.data) for event in Event.objects.published().filter(seq__gt=position)
    ]
