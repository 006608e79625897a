"""Returns: a provider says one of its leads was bad, and may get its quota unit back (SPEC §9)."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from allocation.models import Allocation, Lead
from providers.models import Provider


class ReturnQuerySet(models.QuerySet["Return"]):
    def pending(self) -> ReturnQuerySet:
        return self.filter(status=Return.Status.PENDING)

    def approved_in_cycle(self, provider: Provider) -> ReturnQuerySet:
        """The provider's returns approved in its current cycle (the auto-approval count)."""
        return self.filter(
            provider=provider, status=Return.Status.APPROVED, decided_cycle=provider.cycle
        )


class Return(models.Model):
    """One provider's return of one of its leads. The allocation stays: the lead's record
    keeps who got it, and shows the return beside it."""

    class Reason(models.TextChoices):
        WRONG_NUMBER = "wrong_number", "Wrong number"
        DUPLICATE = "duplicate", "Duplicate"
        SPAM = "spam", "Spam"
        OUT_OF_AREA = "out_of_area", "Out of area"
        OTHER = "other", "Other"

    # Approved at once while the provider's approved returns stay under the cap (SPEC §9).
    AUTO_APPROVABLE = (Reason.WRONG_NUMBER, Reason.DUPLICATE, Reason.SPAM)

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"

    lead = models.ForeignKey(Lead, on_delete=models.PROTECT, related_name="returns")
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="returns")
    allocation = models.OneToOneField(
        Allocation, on_delete=models.PROTECT, related_name="lead_return"
    )
    reason = models.CharField(max_length=16, choices=Reason.choices)
    note = models.TextField(max_length=1000, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    # The provider's cycle when it returned the lead, and when the return was decided.
    cycle = models.PositiveIntegerField()
    decided_cycle = models.PositiveIntegerField(null=True, blank=True)
    # Whether the approval gave a unit of quota back: not when the provider was already full.
    credited = models.BooleanField(default=False)
    # Who returned it (provider:<username>) and who decided (auto, staff:<username>).
    returned_by = models.CharField(max_length=160)
    decided_by = models.CharField(max_length=160, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    decided_at = models.DateTimeField(null=True, blank=True)

    objects = ReturnQuerySet.as_manager()

    class Meta:
        ordering = ["-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["lead", "provider"], name="returns_return_one_per_provider"
            ),
            models.CheckConstraint(
                condition=Q(status__in=["pending", "approved", "rejected"]),
                name="returns_return_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(
                    reason__in=["wrong_number", "duplicate", "spam", "out_of_area", "other"]
                ),
                name="returns_return_reason_valid",
            ),
            models.CheckConstraint(
                condition=~Q(reason="other") | ~Q(note=""), name="returns_return_other_has_note"
            ),
            # Decided exactly when not pending; credited only when approved.
            models.CheckConstraint(
                condition=Q(status="pending", decided_at__isnull=True)
                | (~Q(status="pending") & Q(decided_at__isnull=False)),
                name="returns_return_decided_when_not_pending",
            ),
            models.CheckConstraint(
                condition=Q(credited=False) | Q(status="approved"),
                name="returns_return_credited_only_if_approved",
            ),
        ]
        indexes = [
            models.Index(
                fields=["provider", "decided_cycle"],
                condition=Q(status="approved"),
                name="return_approved_cycle",
            ),
            models.Index(fields=["status", "id"], name="return_status_id"),
        ]

    def __str__(self) -> str:
        return f"Return #{self.pk} of lead #{self.lead_id} by provider #{self.provider_id}"
