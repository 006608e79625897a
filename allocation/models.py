"""Leads, their allocations, the per-service pool cursor and the API keys of lead sources."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from allocation.engine import SLOTS
from providers.models import Membership, Provider, Service


class LeadQuerySet(models.QuerySet["Lead"]):
    def waiting(self) -> LeadQuerySet:
        return self.filter(status=Lead.Status.WAITING)

    def allocated(self) -> LeadQuerySet:
        return self.filter(status=Lead.Status.ALLOCATED)

    def expired(self) -> LeadQuerySet:
        return self.filter(status=Lead.Status.EXPIRED)

    def for_service(self, service_id: int) -> LeadQuerySet:
        return self.filter(service_id=service_id)


class Lead(models.Model):
    class Status(models.TextChoices):
        WAITING = "waiting", "Waiting"
        ALLOCATED = "allocated", "Allocated"
        # Waited longer than LEAD_MAX_WAIT (SPEC §2a): never allocated after that.
        EXPIRED = "expired", "Expired"

    class WaitReason(models.TextChoices):
        NONE = "", "—"
        NOT_ENOUGH_PROVIDERS = "not_enough_providers", "Fewer than 3 eligible providers"
        QUEUED = "queued", "Queued behind an older waiting lead"

    service = models.ForeignKey(Service, on_delete=models.PROTECT, related_name="leads")
    name = models.CharField(max_length=120)
    phone = models.CharField(max_length=16, help_text="Normalised: digits, with an optional +.")
    city = models.CharField(max_length=120)
    # The city as routing compares it (SPEC §2a): normalised, through the staff's aliases, as
    # resolved under the lock at intake. The waiting queue is per (service, city_key).
    city_key = models.CharField(max_length=120, blank=True, default="", db_default="")
    description = models.TextField(max_length=2000, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices)
    wait_reason = models.CharField(max_length=32, choices=WaitReason.choices, blank=True)
    source = models.CharField(max_length=120, blank=True, help_text="API key name, form or staff.")
    trace = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    allocated_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)

    objects = LeadQuerySet.as_manager()

    class Meta:
        ordering = ["-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["phone", "service"], name="allocation_lead_unique_phone_per_service"
            ),
            models.CheckConstraint(
                condition=Q(status__in=["waiting", "allocated", "expired"]),
                name="allocation_lead_status_valid",
            ),
        ]
        indexes = [
            # The waiting queue, per service and city: "does a lead of this service and city
            # wait", "does this service have waiting leads", and the drain's order.
            models.Index(
                fields=["service", "city_key", "id"],
                condition=Q(status="waiting"),
                name="lead_waiting_queue",
            ),
            models.Index(fields=["status", "id"], name="lead_status_id"),
        ]

    def __str__(self) -> str:
        return f"Lead #{self.pk} ({self.status})"


class Allocation(models.Model):
    lead = models.ForeignKey(Lead, on_delete=models.CASCADE, related_name="allocations")
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="allocations")
    role = models.CharField(max_length=16, choices=Membership.Role.choices)
    rank = models.PositiveSmallIntegerField(help_text="1..3, in selection order.")
    # The provider's billing cycle as read under the lock, so leads_this_cycle is derivable.
    cycle = models.PositiveIntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["lead_id", "rank"]
        constraints = [
            models.UniqueConstraint(
                fields=["lead", "provider"], name="allocation_allocation_unique_provider"
            ),
            # With rank in 1..3 and unique per lead, no lead can hold more than three.
            models.UniqueConstraint(
                fields=["lead", "rank"], name="allocation_allocation_unique_rank"
            ),
            models.CheckConstraint(
                condition=Q(rank__gte=1, rank__lte=SLOTS),
                name="allocation_allocation_rank_1_to_3",
            ),
        ]
        indexes = [
            models.Index(fields=["provider", "-id"], name="alloc_provider_recent"),
            # The fairness chart: what one provider got from pools in its current cycle.
            models.Index(
                fields=["provider", "cycle", "lead"],
                condition=Q(role="pool"),
                name="alloc_pool_cycle",
            ),
        ]

    def __str__(self) -> str:
        return f"Lead #{self.lead_id} → provider #{self.provider_id}"
