"""Reads of leads shared by several callers: the intake API, the public form and the
dashboard."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.core.paginator import Page, Paginator
from django.db import connection
from django.db.models import Prefetch, QuerySet

from allocation import sql
from allocation.models import Allocation, Lead
from allocation.services import Intake
from providers.models import Provider, Service


def lead_outcome(lead: Lead) -> dict[str, Any]:
    """SPEC §3's 201/202 body for a lead with its service and allocations (providers) loaded."""
    return {
        "id": lead.pk,
        "status": lead.status,
        "service": {"id": lead.service.pk, "slug": lead.service.slug, "name": lead.service.name},
        "providers": [
            {"id": alloc.provider.pk, "name": alloc.provider.name, "role": alloc.role}
            for alloc in lead.allocations.all()
        ],
        "created_at": lead.created_at,
    }


def intake_outcome(intake: Intake, service: Service) -> dict[str, Any]:
    """The same body for a lead just taken in, from what the engine decided: no re-read of
    what was just committed, so an answer can never fail after the commit."""
    lead = intake.lead
    return {
        "id": lead.pk,
        "status": lead.status,
        "service": {"id": service.pk, "slug": service.slug, "name": service.name},
        "providers": [
            {"id": chosen.id, "name": chosen.name, "role": chosen.role}
            for chosen in intake.providers
        ],
        "created_at": lead.created_at,
    }


def provider_allocations(provider: Provider, page_number: object, *, per_page: int = 50) -> Page:
    """One page of the leads allocated to a provider, newest first."""
    allocations = (
        Allocation.objects.filter(provider=provider).select_related("lead__service").order_by("-pk")
    )
    return Paginator(allocations, per_page).get_page(page_number)


# --- Read API (SPEC §4): leads ---------------------------------------------------------
# Every list is newest first (by id, which is unique, so pages never overlap or skip) and
# costs a fixed number of queries whatever its length: a count, the page, one prefetch.


def _with_providers(leads: QuerySet[Lead]) -> QuerySet[Lead]:
    return leads.select_related("service").prefetch_related(
        Prefetch(
            "allocations",
            queryset=Allocation.objects.select_related("provider").order_by("rank"),
        )
    )


def lead_page(
    *,
    limit: int,
    offset: int,
    service_id: int | None = None,
    status: str | None = None,
    provider_id: int | None = None,
) -> tuple[list[Lead], int]:
    """A page of leads, newest first, and how many match: three queries."""
    leads = Lead.objects.all()
    if service_id is not None:
        leads = leads.for_service(service_id)
    if status is not None:
        leads = leads.filter(status=status)
    if provider_id is not None:
        # A provider holds at most one allocation per lead, so the join repeats no lead.
        leads = leads.filter(allocations__provider_id=provider_id)
    count = leads.count()
    page = list(_with_providers(leads).order_by("-pk")[offset : offset + limit])
    return page, count


def lead_detail(lead_id: int) -> Lead | None:
    """The lead with its service and allocations, or None: two queries."""
    return _with_providers(Lead.objects.filter(pk=lead_id)).first()


def lead_summary(lead: Lead) -> dict[str, Any]:
    """A lead as the read API lists it: the intake answer plus the lead's own fields."""
    return lead_outcome(lead) | {
        "name": lead.name,
        "phone": lead.phone,
        "city": lead.city,
        "city_key": lead.city_key,
        "description": lead.description,
        "source": lead.source,
        "wait_reason": lead.wait_reason or None,
        "allocated_at": lead.allocated_at,
        "expired_at": lead.expired_at,
    }


def lead_trace(lead: Lead) -> list[dict[str, Any]]:
    """The stored decision trace: every provider the engine examined, in order."""
    return [
        {
            "provider_id": entry["provider_id"],
            "role": entry["role"],
            "outcome": entry["outcome"],
            "reason": entry.get("reason"),
        }
        for entry in lead.trace or []
    ]


# --- Dashboard reads ---------------------------------------------------------------------------
# One query each, whatever the number of rows asked about or stored (allocation/sql.py).


def latest_allocations(
    provider_ids: list[int], *, per_provider: int
) -> dict[int, list[tuple[int, int, datetime]]]:
    """The newest ``per_provider`` allocations of each of these providers, newest first, as
    (lead id, service id, allocated at); a provider with none maps to []."""
    latest: dict[int, list[tuple[int, int, datetime]]] = {pk: [] for pk in provider_ids}
    if not provider_ids:
        return latest
    with connection.cursor() as cursor:
        cursor.execute(sql.LATEST_ALLOCATIONS, {"ids": provider_ids, "per_provider": per_provider})
        for provider_id, lead_id, service_id, created_at in cursor.fetchall():
            latest[provider_id].append((lead_id, service_id, created_at))
    return latest


def pool_leads(keys: Iterable[tuple[int, int, int]]) -> dict[tuple[int, int, int], int]:
    """For each (service id, provider id, cycle): how many of the service's leads its pool gave
    the provider in that cycle (the fairness chart)."""
    unique = sorted(set(keys))
    if not unique:
        return {}
    services, providers, cycles = (list(column) for column in zip(*unique, strict=True))
    with connection.cursor() as cursor:
        cursor.execute(
            sql.POOL_LEADS, {"services": services, "providers": providers, "cycles": cycles}
        )
        return {(s, p, c): n for s, p, c, n in cursor.fetchall()}


def waiting_queue_heads(service_ids: list[int]) -> dict[int, tuple[int, float]]:
    """For each of these services: its waiting leads and the age in seconds of the oldest (0
    when none waits), by the database's clock."""
    if not service_ids:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(sql.WAITING_QUEUES, {"ids": service_ids})
        return {pk: (waiting, age) for pk, waiting, age in cursor.fetchall()}
