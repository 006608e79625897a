"""The catalogue: services, providers and who serves what (SPEC §1)."""

from __future__ import annotations

from datetime import date

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import F, Q

from providers import routing as rules

MAX_MANDATORY = 3


def version_field() -> models.PositiveBigIntegerField:
    """Optimistic concurrency for the admin: the number of catalogue edits the row has had.

    PostgreSQL owns it (migration providers 0004): a trigger adds 1 whenever a catalogue column
    changes, whoever writes it, and keeps it as it was on any other write. Allocations and
    quota resets touch only engine-owned columns, so they leave it alone.
    """
    return models.PositiveBigIntegerField(default=1, db_default=1, editable=False)


class ServiceQuerySet(models.QuerySet["Service"]):
    def active(self) -> ServiceQuerySet:
        return self.filter(active=True)


class Service(models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=120)
    active = models.BooleanField(default=True)
    # Counts edits of slug, name and active (not of memberships, which carry their own).
    version = version_field()

    objects = ServiceQuerySet.as_manager()

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return self.name


class ProviderQuerySet(models.QuerySet["Provider"]):
    def active(self) -> ProviderQuerySet:
        return self.filter(status=Provider.Status.ACTIVE)

    def eligible(self) -> ProviderQuerySet:
        return self.active().filter(remaining_quota__gt=0)


class Provider(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        PAUSED = "paused", "Paused"

    name = models.CharField(max_length=120)
    quota = models.PositiveIntegerField(default=10, help_text="Leads per billing cycle.")
    remaining_quota = models.PositiveIntegerField(default=10)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    cycle = models.PositiveIntegerField(default=1, help_text="Incremented by every quota reset.")
    # Counters kept in step with the allocations by the engine, in the same UPDATE that takes
    # the quota; they are derivable from Allocation rows and the tests check that they agree.
    leads_this_cycle = models.PositiveIntegerField(default=0)
    leads_total = models.PositiveIntegerField(default=0)
    # Units of quota given back to this cycle by approved returns (SPEC §9), kept under the
    # provider's lock by credit_quota and zeroed by the quota reset. The quota left is always
    # quota - leads_this_cycle + credits_this_cycle, within 0..quota (remaining_after), so a
    # quota edited later in the cycle keeps them.
    credits_this_cycle = models.PositiveIntegerField(default=0, db_default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    # Counts edits of name, quota, status and the routing rules: what the admin form writes.
    version = version_field()

    # Routing rules (SPEC §2a). The defaults are no rules: everywhere, always, no caps.
    cities = ArrayField(
        models.CharField(max_length=120),
        default=list,
        blank=True,
        help_text="Canonical cities served (normalised, aliases resolved); empty: everywhere.",
    )
    timezone = models.CharField(
        max_length=64, blank=True, default="", help_text="IANA name; blank: the site's TIME_ZONE."
    )
    hours = models.CharField(
        max_length=500,
        blank=True,
        default="",
        help_text="Weekly hours, e.g. “mon-fri 08:00-18:00; sat 09:00-13:00”; blank: always.",
    )
    time_off = models.JSONField(
        default=list, blank=True, help_text="Inclusive local date ranges: [[first, last], ...]."
    )
    daily_cap = models.PositiveIntegerField(null=True, blank=True)
    weekly_cap = models.PositiveIntegerField(null=True, blank=True)
    # What staff allow the provider to set itself in the portal (SPEC §9): its areas only
    # while they are not locked, and caps no higher than these maximums (None: its quota).
    areas_locked = models.BooleanField(default=False, db_default=False)
    max_daily_cap = models.PositiveIntegerField(null=True, blank=True)
    max_weekly_cap = models.PositiveIntegerField(null=True, blank=True)
    # Leads counted for the caps, per local day and ISO week (its Monday), in the provider's
    # timezone. The engine reads and bumps them under the provider's row lock, in the UPDATE
    # that takes the quota, so they are exact under any concurrency.
    cap_day = models.DateField(null=True, blank=True, editable=False)
    cap_day_count = models.PositiveIntegerField(default=0, editable=False)
    cap_week = models.DateField(null=True, blank=True, editable=False)
    cap_week_count = models.PositiveIntegerField(default=0, editable=False)
    # The time rules (time off, hours, caps) as of routing_checked: open or not, why not, and
    # when that answer next changes. Materialised so that the engine's walk can skip closed
    # providers through an index (the eligibility mirror includes it); the engine still
    # decides on the rules themselves, under lock, at the lead's time. Kept by the engine
    # (a cap reached) and by refresh_routing (providers/services.py) at routing_changes_at.
    routing_open = models.BooleanField(default=True, editable=False)
    routing_reason = models.CharField(max_length=16, blank=True, default="", editable=False)
    routing_changes_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ProviderQuerySet.as_manager()

    class Meta:
        ordering = ["pk"]
        constraints = [
            models.CheckConstraint(
                condition=Q(remaining_quota__gte=0) & Q(remaining_quota__lte=F("quota")),
                name="providers_provider_remaining_quota_in_range",
            ),
            models.CheckConstraint(
                condition=Q(status__in=["active", "paused"]),
                name="providers_provider_status_valid",
            ),
        ]
        indexes = [
            # The transition refresh: providers whose time rules change their answer next.
            models.Index(
                fields=["routing_changes_at"],
                condition=Q(routing_changes_at__isnull=False),
                name="provider_routing_due",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_eligible(self) -> bool:
        """Active, with quota, and open by its time rules as last materialised."""
        return self.status == self.Status.ACTIVE and self.remaining_quota > 0 and self.routing_open

    @property
    def routing(self) -> rules.Routing:
        """This row's routing rules as plain values."""
        return rules.Routing(
            cities=frozenset(self.cities or ()),
            timezone=self.timezone or settings.TIME_ZONE,
            hours=rules.parse_hours(self.hours or ""),
            time_off=rules.time_off_from_json(self.time_off or ()),
            daily_cap=self.daily_cap,
            weekly_cap=self.weekly_cap,
        )

    @property
    def usage(self) -> rules.Usage:
        return rules.Usage(self.cap_day, self.cap_day_count, self.cap_week, self.cap_week_count)

    def remaining_after(self, *, quota: int, credits: int) -> int:
        """The quota left with this quota and these credits: what the cycle has not used, net
        of its credits, within 0..quota."""
        return min(max(quota - self.leads_this_cycle + credits, 0), quota)

    def leads_on(self, local_day: date) -> tuple[int, int]:
        """Leads counted for the caps on that local day and in its ISO week."""
        usage = self.usage
        return usage.today(local_day), usage.this_week(rules.week_of(local_day))


class MembershipQuerySet(models.QuerySet["Membership"]):
    def mandatory(self) -> MembershipQuerySet:
        return self.filter(role=Membership.Role.MANDATORY)

    def pool(self) -> MembershipQuerySet:
        return self.filter(role=Membership.Role.POOL)


class Membership(models.Model):
    class Role(models.TextChoices):
        MANDATORY = "mandatory", "Mandatory"
        POOL = "pool", "Pool"

    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="memberships")
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    position = models.PositiveIntegerField()
    # Mirror of "provider is active and has quota", kept by PostgreSQL triggers (migration
    # providers 0002). It lets the engine find the next eligible pool providers through a
    # partial index, so the work per lead does not grow with the pool or with exhaustion.
    provider_eligible = models.BooleanField(default=True, editable=False)
    # Mirror of "provider serves every city" (no cities listed), kept by the same triggers
    # (migration providers 0007). The trace's walk reads only the memberships that are not
    # both eligible and everywhere (membership_skippable_walk): none in a catalogue without
    # routing rules, so its cost there is what it was before them.
    provider_everywhere = models.BooleanField(default=True, editable=False)
    # Counts edits of service, provider, role and position; not of provider_eligible.
    version = version_field()

    objects = MembershipQuerySet.as_manager()

    class Meta:
        ordering = ["service_id", "role", "position"]
        constraints = [
            models.UniqueConstraint(
                fields=["service", "provider"], name="providers_membership_unique_provider"
            ),
            models.UniqueConstraint(
                fields=["service", "role", "position"], name="providers_membership_unique_position"
            ),
            # Mandatory positions are 1..3; with the unique position this caps a service at
            # three mandatory providers in the database itself.
            models.CheckConstraint(
                condition=~Q(role="mandatory") | Q(position__gte=1, position__lte=MAX_MANDATORY),
                name="providers_membership_mandatory_position_1_to_3",
            ),
            models.CheckConstraint(
                condition=Q(role__in=["mandatory", "pool"]), name="providers_membership_role_valid"
            ),
        ]
        indexes = [
            models.Index(
                fields=["service", "role", "position"],
                condition=Q(provider_eligible=True),
                name="membership_eligible_walk",
            ),
            # The trace lists the ineligible providers the walk passes; this finds them without
            # scanning a pool full of eligible ones.
            models.Index(
                fields=["service", "role", "position"],
                condition=Q(provider_eligible=False),
                name="membership_ineligible_walk",
            ),
            # The memberships a lead's walk may skip: ineligible, or serving some cities only.
            models.Index(
                fields=["service", "role", "position"],
                condition=Q(provider_eligible=False) | Q(provider_everywhere=False),
                name="membership_skippable_walk",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider} in {self.service} ({self.role} #{self.position})"

    def clean(self) -> None:
        if self.role == self.Role.MANDATORY and not 1 <= (self.position or 0) <= MAX_MANDATORY:
            raise ValidationError(
                {
                    "position": f"Mandatory positions are 1 to {MAX_MANDATORY}: a service has "
                    f"at most {MAX_MANDATORY} mandatory providers."
                }
            )


class PoolCity(models.Model):
    """One row per pool membership and city its provider serves ('' for everywhere).

    PostgreSQL alone writes it (triggers of migration providers 0006), from the memberships and
    the providers' cities, with the eligibility mirror copied from the membership. The engine
    walks a lead's pool through it (the city's rows and the everywhere rows, in position order),
    so a pool of 10,000 providers spread over 100 cities costs what the seed catalogue does.
    """

    membership = models.ForeignKey(
        Membership, on_delete=models.DO_NOTHING, related_name="+", db_constraint=False
    )
    service = models.ForeignKey(
        Service, on_delete=models.DO_NOTHING, related_name="+", db_constraint=False
    )
    provider = models.ForeignKey(
        Provider, on_delete=models.DO_NOTHING, related_name="+", db_constraint=False
    )
    position = models.PositiveIntegerField()
    city = models.CharField(max_length=120, blank=True)
    provider_eligible = models.BooleanField(default=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["membership", "city"], name="providers_poolcity_unique_city"
            )
        ]
        indexes = [
            models.Index(
                fields=["service", "city", "position"],
                condition=Q(provider_eligible=True),
                name="poolcity_eligible_walk",
            ),
        ]

    def __str__(self) -> str:
        return f"Membership #{self.membership_id} in “{self.city or '*'}”"


class CityAlias(models.Model):
    """Another name of a city (“Bangalore” for “Bengaluru”), both stored normalised."""

    alias = models.CharField(max_length=120, unique=True)
    city = models.CharField(max_length=120, help_text="The canonical name, normalised.")

    class Meta:
        ordering = ["city", "alias"]
        verbose_name_plural = "city aliases"
        constraints = [
            models.CheckConstraint(
                condition=~Q(alias=F("city")), name="providers_cityalias_not_itself"
            )
        ]

    def __str__(self) -> str:
        return f"{self.alias} → {self.city}"


class PoolCursor(models.Model):
    """Where a service's round robin stands: the position of the last pool provider picked.

    Its row is also the service's allocation lock: the engine takes it FOR UPDATE first.
    """

    service = models.OneToOneField(Service, on_delete=models.CASCADE, related_name="cursor")
    position = models.PositiveIntegerField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            # OneToOneField is already unique; this names the rule the product depends on.
            models.UniqueConstraint(fields=["service"], name="providers_poolcursor_one_per_service")
        ]

    def __str__(self) -> str:
        return f"Cursor of {self.service_id} at {self.position}"
