"""Writing live events: in the transaction that makes them true, announced after its commit."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from events import hub
from events.models import Event


def record_event(event_type: str, data: dict[str, Any]) -> Event:
    """Store an event with the caller's writes; streams see it after the commit, never before.

    Call it inside the transaction of the write it announces: a rollback takes the event with
    it, and a commit makes both durable together, so a process that dies right after the
    commit loses nothing (any stream catches up from the log).
    """
    event = Event.objects.create(type=event_type, data=data)
    announce_after_commit()
    return event


def announce_after_commit() -> None:
    """Wake the streams once the current transaction commits (at once outside a transaction).

    Robust: a failure to wake them is logged, never raised into a committed write, and costs
    only latency, since every stream also polls the log.
    """
    transaction.on_commit(hub.notify_committed, robust=True)
