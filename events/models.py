"""The event log behind the dashboard's stream: written in the transaction that makes it true."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone


class EventQuerySet(models.QuerySet["Event"]):
    def published(self) -> EventQuerySet:
        """Committed events, in the order every stream sends them."""
        return self.filter(seq__isnull=False).order_by("seq")


class Event(models.Model):
    """One live event (SPEC §6), stored with the write it announces.

    ``seq`` is the stream position (``Last-Event-ID``). It is not the row id: ids are handed
    out when rows are inserted, and transactions commit in another order, so a reader that
    resumed after id 12 could miss an id 11 that committed later. A deferred trigger gives
    ``seq`` at commit time instead, under one advisory lock held until the commit is visible
    (migration 0001): seq order is commit order, and a reader that has seen seq N has seen,
    or will never see, every seq below N. Inside its transaction an event has no seq yet.
    """

    seq = models.BigIntegerField(null=True, blank=True, editable=False)
    type = models.CharField(max_length=32)
    data = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)

    objects = EventQuerySet.as_manager()

    class Meta:
        ordering = ["seq"]
        constraints = [
            models.UniqueConstraint(
                fields=["seq"], condition=Q(seq__isnull=False), name="events_event_unique_seq"
            )
        ]
        indexes = [models.Index(fields=["created_at"], name="event_created_at")]

    def __str__(self) -> str:
        return f"{self.type} #{self.seq or '(uncommitted)'}"


class Horizon(models.Model):
    """How far the log has been trimmed: every event up to ``trimmed_through`` may be gone.

    One row. A stream resuming from an older position is told to start afresh
    (``stream-reset``); resuming from any later one it misses nothing. Positions can have gaps
    (a rolled-back transaction draws a seq and never commits), so the oldest row left in the
    log cannot tell trimmed positions from gaps; this row does.
    """

    trimmed_through = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"Events up to {self.trimmed_through} trimmed"
