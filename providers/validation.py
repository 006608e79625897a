"""SPEC §1's membership rules, checked in code so that the admin and callers get clear messages.

PostgreSQL enforces the same rules (providers/models.py), but only as an IntegrityError. These
functions look at a service's whole configuration and say, in words, what is wrong with it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from django.core.exceptions import ValidationError

from providers.models import MAX_MANDATORY, Membership


@dataclass(frozen=True)
class MembershipSpec:
    """One membership as the rules see it: who, in which role, at which position."""

    provider_id: int
    role: str
    position: int
    provider_name: str = ""

    @property
    def label(self) -> str:
        return self.provider_name or f"Provider #{self.provider_id}"

    @classmethod
    def of(cls, membership: Membership) -> MembershipSpec:
        return cls(
            provider_id=membership.provider_id,
            role=membership.role,
            position=membership.position,
            provider_name=membership.provider.name,
        )


def membership_errors(memberships: Iterable[MembershipSpec]) -> list[str]:
    """Every SPEC §1 rule broken by these memberships, taken as one service's whole set."""
    specs = list(memberships)
    errors: list[str] = []

    mandatory = [spec for spec in specs if spec.role == Membership.Role.MANDATORY]
    if len(mandatory) > MAX_MANDATORY:
        names = ", ".join(spec.label for spec in sorted(mandatory, key=lambda s: s.position))
        errors.append(
            f"A service has at most {MAX_MANDATORY} mandatory providers; "
            f"this one would have {len(mandatory)} ({names})."
        )
    for spec in mandatory:
        if not 1 <= spec.position <= MAX_MANDATORY:
            errors.append(
                f"Mandatory positions are 1 to {MAX_MANDATORY}; "
                f"{spec.label} has position {spec.position}."
            )

    counts = Counter(spec.provider_id for spec in specs)
    for provider_id, count in sorted(counts.items()):
        if count > 1:
            label = next(spec.label for spec in specs if spec.provider_id == provider_id)
            errors.append(
                f"{label} appears {count} times in this service; a provider joins a service "
                "once, as mandatory or as pool."
            )

    holders: dict[tuple[str, int], list[str]] = defaultdict(list)
    for spec in specs:
        holders[(spec.role, spec.position)].append(spec.label)
    for (role, position), labels in sorted(holders.items()):
        if len(labels) > 1:
            errors.append(
                f"{role.capitalize()} position {position} is given to {' and '.join(labels)}; "
                "positions are unique per role."
            )
    return errors


def validate_memberships(memberships: Iterable[MembershipSpec]) -> None:
    """Raise ValidationError listing every rule a service's whole membership set breaks."""
    errors = membership_errors(memberships)
    if errors:
        raise ValidationError(errors)


def validate_membership(membership: Membership) -> None:
    """Raise ValidationError if adding or changing this one membership breaks its service's rules.

    The other memberships of the service are read from the database as they are now.
    """
    others = (
        Membership.objects.filter(service_id=membership.service_id)
        .exclude(pk=membership.pk)
        .select_related("provider")
    )
    validate_memberships([*(MembershipSpec.of(m) for m in others), MembershipSpec.of(membership)])
