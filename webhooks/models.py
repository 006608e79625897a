"""Inbound webhook events already processed: the idempotency record of SPEC §5."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

EVENT_ID_MAX_LENGTH = 255


class ProcessedEvent(models.Model):
    """One quota-reset event, inserted in the same transaction as the reset it made.

    The unique constraint on ``event_id`` is the idempotency guard: a second delivery of the
    same id cannot insert its row, so it cannot reset anything.
    """

    event_id = models.CharField(
        max_length=EVENT_ID_MAX_LENGTH, help_text="The body's eventId (not the webhook-id header)."
    )
    body_sha256 = models.CharField(
        max_length=64,
        help_text="SHA-256 of the canonical body: keys sorted, providerIds sorted and unique.",
    )
    received_at = models.DateTimeField(default=timezone.now)
    # None means every provider was reset; otherwise the ids that were.
    provider_ids = models.JSONField(null=True, blank=True)
    providers_reset = models.PositiveIntegerField(default=0)
    # The waiting leads the drain that followed the reset allocated before the reset was
    # announced (the webhook's own drain, at most DRAIN_INLINE_SECONDS; or, if the process
    # that answered died first, the background drain). None until then.
    leads_allocated = models.PositiveIntegerField(null=True, blank=True)
    # When quota.reset went to the dashboards; set once, by whichever drain gets there first.
    announced_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["event_id"], name="webhooks_processedevent_unique_event_id"
            ),
            models.CheckConstraint(
                condition=~Q(event_id=""), name="webhooks_processedevent_event_id_not_empty"
            ),
            models.CheckConstraint(
                condition=Q(body_sha256__regex=r"^[0-9a-f]{64}$"),
                name="webhooks_processedevent_body_sha256_hex",
            ),
        ]

    def __str__(self) -> str:
        return f"Event {self.event_id}"

    @property
    def scope(self) -> str:
        if self.provider_ids is None:
            return "all providers"
        return "providers " + ", ".join(str(pk) for pk in self.provider_ids)
