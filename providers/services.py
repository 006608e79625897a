"""Writes to the catalogue. Each function owns its transaction and keeps the lock order.

Lock order, everywhere in leaddist: pool cursors by service pk, then providers by pk. Anything
that can add capacity (resume, quota raised, membership added, quota reset) takes the cursors
of the services it touches first, so it cannot interleave with an allocation of those
services: every allocation sees the catalogue either wholly before or wholly after it.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction

from events.services import record_event
from events.types import PROVIDER_UPDATED
from providers.models import Membership, PoolCursor, Provider, Service
from providers.signals import capacity_added


def lock_cursors(service_ids: Iterable[int]) -> dict[int, PoolCursor]:
    """Lock the pool cursors of these services in pk order, creating any that are missing."""
    ids = sorted(set(service_ids))
    if not ids:
        return {}
    cursors = list(
        PoolCursor.objects.select_for_update().filter(service_id__in=ids).order_by("service_id")
    )
    if len(cursors) < len(ids):
        # A cursor row is normally created with its service; this covers any made otherwise.
        PoolCursor.objects.bulk_create(
            [PoolCursor(service_id=sid) for sid in ids], ignore_conflicts=True
        )
        cursors = list(
            PoolCursor.objects.select_for_update().filter(service_id__in=ids).order_by("service_id")
        )
    return {cursor.service_id: cursor for cursor in cursors}


def services_of(provider_ids: Iterable[int]) -> list[int]:
    """Ids of the services in which any of these providers is a member."""
    return sorted(
        set(
            Membership.objects.filter(provider_id__in=list(provider_ids)).values_list(
                "service_id", flat=True
            )
        )
    )


def _announce_change(provider: Provider) -> None:
    """Record provider.updated with the change, so dashboards see the committed state."""
    record_event(
        PROVIDER_UPDATED,
        {
            "provider_id": provider.pk,
            "status": provider.status,
            "quota": provider.quota,
            "remaining_quota": provider.remaining_quota,
        },
    )


def _announce_capacity(service_ids: list[int]) -> None:
    if service_ids:
        transaction.on_commit(
            lambda: capacity_added.send(sender=Provider, service_ids=service_ids), robust=True
        )


def update_provider(
    provider: Provider,
    *,
    name: str | None = None,
    quota: int | None = None,
    status: str | None = None,
) -> Provider:
    """Change a provider's name, quota or status under the engine's lock order.

    After a quota change the remaining quota is the new quota less the leads this cycle already
    used, never below 0: a plan upgraded mid-cycle gives the extra leads at once, and no
    sequence of changes restores used quota. Only the payment webhook does that.
    """
    with transaction.atomic():
        service_ids = services_of([provider.pk])
        lock_cursors(service_ids)
        locked = Provider.objects.select_for_update().get(pk=provider.pk)
        was_eligible, old_quota = locked.is_eligible, locked.quota
        if name is not None:
            locked.name = name
        if status is not None:
            locked.status = status
        if quota is not None and quota != old_quota:
            locked.quota = quota
            # What is left is the new quota less what this cycle already used, never less
            # than 0: lowering a quota and raising it back gives nothing back.
            locked.remaining_quota = max(quota - locked.leads_this_cycle, 0)
        locked.save()
        _announce_change(locked)
        if locked.is_eligible and (not was_eligible or locked.quota > old_quota):
            _announce_capacity(service_ids)
    return locked


def pause_provider(provider: Provider) -> Provider:
    """Stop sending leads to the provider; its quota is kept for when it resumes."""
    return update_provider(provider, status=Provider.Status.PAUSED)


def resume_provider(provider: Provider) -> Provider:
    """Send the provider leads again; waiting leads of its services are drained after commit."""
    return update_provider(provider, status=Provider.Status.ACTIVE)


def memberships_changed(service: Service) -> None:
    """Tell the engine a service's memberships changed; call inside the saving transaction."""
    _announce_capacity([service.pk])


def create_service(*, slug: str, name: str, active: bool = True, pk: int | None = None) -> Service:
    """Create a service together with its pool cursor."""
    with transaction.atomic():
        service = Service.objects.create(pk=pk, slug=slug, name=name, active=active)
        PoolCursor.objects.create(service=service)
    return service


def seed_catalogue() -> dict[str, int]:
    """Create what is missing of SPEC §1's catalogue; never touch an existing provider's quota.

    Returns how many services, providers and memberships it created.
    """
    from django.db import connection

    from providers import catalogue

    created = {"services": 0, "providers": 0, "memberships": 0}
    with transaction.atomic():
        for pk, slug, name in catalogue.SERVICES:
            _, made = Service.objects.get_or_create(pk=pk, defaults={"slug": slug, "name": name})
            created["services"] += made
            PoolCursor.objects.get_or_create(service_id=pk)
        for pk, name in catalogue.PROVIDERS:
            _, made = Provider.objects.get_or_create(
                pk=pk,
                defaults={
                    "name": name,
                    "quota": catalogue.SEED_QUOTA,
                    "remaining_quota": catalogue.SEED_QUOTA,
                },
            )
            created["providers"] += made
        for service_id, (mandatory, pool) in catalogue.MEMBERSHIPS.items():
            for role, ids in ((Membership.Role.MANDATORY, mandatory), (Membership.Role.POOL, pool)):
                for position, provider_id in enumerate(ids, start=1):
                    if Membership.objects.filter(
                        service_id=service_id, provider_id=provider_id
                    ).exists():
                        continue
                    Membership.objects.create(
                        service_id=service_id, provider_id=provider_id, role=role, position=position
                    )
                    created["memberships"] += 1
        # Explicit ids leave the sequences behind; move them past the seeded rows.
        with connection.cursor() as cursor:
            for model in (Service, Provider):
                table = model._meta.db_table
                cursor.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"GREATEST((SELECT MAX(id) FROM {table}), 1))"
                )
    return created
