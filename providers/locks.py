"""The one place that locks catalogue rows, in the one order every transaction in leaddist uses.

1. Pool cursors, by service pk. A cursor is its service's allocation lock: allocations of the
   service queue on it, and everything that changes what they may pick (a provider resumed or
   its quota changed, a quota reset, memberships saved) takes it first, so an allocation sees
   such a change wholly before or wholly after it. A service's memberships change only under
   its cursor lock.
2. Service rows, each only after its own cursor (a service edit).
3. Providers, by pk. Providers are shared between services: taken in one order, two
   transactions can neither sell the same last unit of quota nor deadlock each other.
4. Membership rows, by pk, after the providers they name. The eligibility triggers (migrations
   providers 0002 and 0005) write a membership only while its provider is locked, so a
   membership lock taken after the provider's never waits on a transaction that waits on us.

The engine takes steps 1 and 3 in its own hand-tuned statements (allocation/services.py:
``_lock_cursor`` and ``CANDIDATES_SQL``), in this order; the drain locks its waiting lead
between them. Everything else locks through these functions.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction

from providers.models import Membership, PoolCursor, Provider, Service


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


def lock_service(service_id: int) -> Service:
    """Lock a service for an edit: its cursor, then its row.

    NO KEY UPDATE: the row's key never changes, and the weaker lock lets the key-share locks of
    inserts that point at the service (a lead, a membership) through.
    """
    lock_cursors([service_id])
    return Service.objects.select_for_update(no_key=True).get(pk=service_id)


def lock_providers(provider_ids: Iterable[int] | None) -> dict[int, Provider]:
    """Lock these providers (None: every provider) FOR UPDATE in pk order; return them by pk.

    Call it after the cursors of the services involved. Unknown ids are left out.
    """
    providers = Provider.objects.all()
    if provider_ids is not None:
        ids = sorted(set(provider_ids))
        if not ids:
            return {}
        providers = providers.filter(pk__in=ids)
    return {p.pk: p for p in providers.select_for_update().order_by("pk")}


def lock_memberships(membership_ids: Iterable[int]) -> dict[int, Membership]:
    """Lock these memberships in pk order, after their providers; return them by pk."""
    ids = sorted(set(membership_ids))
    if not ids:
        return {}
    rows = (
        Membership.objects.select_for_update(of=("self",))
        .filter(pk__in=ids)
        .select_related("provider")
        .order_by("pk")
    )
    return {m.pk: m for m in rows}


def services_of(provider_ids: Iterable[int]) -> list[int]:
    """Ids of the services in which any of these providers is a member: the cursors to lock
    before those providers."""
    return sorted(
        set(
            Membership.objects.filter(provider_id__in=list(provider_ids)).values_list(
                "service_id", flat=True
            )
        )
    )


class _ServicesMoved(Exception):
    """A membership committed between reading a provider's services and locking it."""


def lock_providers_with_services(
    provider_ids: Iterable[int],
) -> tuple[list[int], dict[int, Provider]]:
    """Lock the cursors of every service these providers serve, then the providers; return the
    service ids and the providers.

    The services must be read before their cursors are locked, and a membership committed in
    between would leave its service's cursor unlocked (and its drain unannounced). So once the
    providers are locked, their services are read again: no membership of theirs can commit
    now (its trigger reads the provider FOR SHARE and waits for us). If the set grew, the pass
    is rolled back to its savepoint, which releases its locks, and taken again with the union,
    in order.
    """
    ids = sorted(set(provider_ids))
    service_ids = services_of(ids)
    while True:
        try:
            with transaction.atomic():
                lock_cursors(service_ids)
                providers = lock_providers(ids)
                now = services_of(ids)
                if not set(now) <= set(service_ids):
                    service_ids = sorted(set(service_ids) | set(now))
                    raise _ServicesMoved
        except _ServicesMoved:
            continue
        return service_ids, providers
