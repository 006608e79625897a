"""What the portal reads: always one provider's rows, named by the caller (the signed-in
account's provider); nothing here can be asked for another provider's data by id alone."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone

from allocation.models import Allocation
from portal.delivery import deliveries_to
from providers.models import Provider
from providers.selectors import provider_routing
from returns.models import Return
from returns.selectors import provider_returns

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def _allocations(provider: Provider) -> QuerySet[Allocation]:
    return Allocation.objects.filter(provider=provider).select_related("lead__service")


def _search(allocations: QuerySet[Allocation], query: str) -> QuerySet[Allocation]:
    """By the customer's name (any part, any case) or phone (its digits, in order)."""
    query = query.strip()
    if not query:
        return allocations
    condition = Q(lead__name__icontains=query)
    digits = re.sub(r"\D", "", query)
    if len(digits) >= 3:
        condition |= Q(lead__phone__contains=digits)
    return allocations.filter(condition)


def _item(
    allocation: Allocation,
    deliveries: list[dict[str, Any]],
    returned: dict[str, Any] | None,
) -> dict[str, Any]:
    lead = allocation.lead
    return {
        "id": lead.pk,
        "name": lead.name,
        "phone": lead.phone,
        "city": lead.city,
        "description": lead.description,
        "service": {"id": lead.service.pk, "slug": lead.service.slug, "name": lead.service.name},
        "created_at": lead.created_at,
        "allocated_at": allocation.created_at,
        "role": allocation.role,
        "rank": allocation.rank,
        "deliveries": deliveries,
        "return": returned,
    }


def _items(provider: Provider, allocations: list[Allocation]) -> list[dict[str, Any]]:
    lead_ids = [a.lead_id for a in allocations]
    deliveries = deliveries_to(provider.pk, lead_ids)
    returns = provider_returns(provider.pk, lead_ids)
    return [_item(a, deliveries[a.lead_id], returns.get(a.lead_id)) for a in allocations]


def provider_leads(
    provider: Provider, *, query: str = "", limit: int = DEFAULT_LIMIT, offset: int = 0
) -> tuple[list[dict[str, Any]], int]:
    """A page of the leads allocated to this provider, newest first, and how many match."""
    allocations = _search(_allocations(provider), query)
    count = allocations.count()
    page = list(allocations.order_by("-lead_id")[offset : offset + limit])
    return _items(provider, page), count


def provider_lead(provider: Provider, lead_id: int) -> dict[str, Any] | None:
    """One lead as this provider sees it, or None if it was not allocated to this provider."""
    allocation = _allocations(provider).filter(lead_id=lead_id).first()
    return _items(provider, [allocation])[0] if allocation is not None else None


def provider_allocation(provider: Provider, lead_id: int) -> Allocation | None:
    """This provider's allocation of the lead (what it may return), or None."""
    return Allocation.objects.filter(provider=provider, lead_id=lead_id).first()


@dataclass(frozen=True)
class ProviderSummary:
    provider: Provider
    leads_today: int
    leads_this_week: int
    returns_this_cycle: int
    approved_returns_this_cycle: int
    # The caps of its routing rules (SPEC §2a); None: no cap.
    daily_cap: int | None = None
    weekly_cap: int | None = None

    @property
    def return_rate(self) -> float:
        """Returns made this cycle per lead this cycle (0 with no leads)."""
        leads = self.provider.leads_this_cycle
        return round(self.returns_this_cycle / leads, 4) if leads else 0.0

    def as_json(self) -> dict[str, Any]:
        p = self.provider
        return {
            "id": p.pk,
            "name": p.name,
            "status": p.status,
            "quota": p.quota,
            "remaining_quota": p.remaining_quota,
            "cycle": p.cycle,
            "leads_this_cycle": p.leads_this_cycle,
            "credits_this_cycle": p.credits_this_cycle,
            "leads_today": self.leads_today,
            "leads_this_week": self.leads_this_week,
            "daily_cap": self.daily_cap,
            "weekly_cap": self.weekly_cap,
            "returns_this_cycle": self.returns_this_cycle,
            "approved_returns_this_cycle": self.approved_returns_this_cycle,
            "return_rate": self.return_rate,
        }


def provider_summary(provider_id: int, *, now: datetime | None = None) -> ProviderSummary:
    """The provider as the portal shows it, read afresh: its quota, its leads today and this
    week as its caps count them (its own timezone, the engine's counters: the selector the
    dashboard and the API use), and its return rate."""
    provider = Provider.objects.get(pk=provider_id)
    counts = provider_routing(provider, now or timezone.now())["routing"]
    this_cycle = Return.objects.filter(provider=provider, cycle=provider.cycle)
    return ProviderSummary(
        provider=provider,
        leads_today=counts["leads_today"],
        leads_this_week=counts["leads_this_week"],
        returns_this_cycle=this_cycle.count(),
        approved_returns_this_cycle=Return.objects.approved_in_cycle(provider).count(),
        daily_cap=provider.daily_cap,
        weekly_cap=provider.weekly_cap,
    )


def provider_routing_answer(provider: Provider, *, now: datetime | None = None) -> dict[str, Any]:
    """The provider's routing rules, its counts against its caps, whether it can take leads
    now, and what staff let it set itself: GET and PUT /portal/api/routing."""
    return provider_routing(provider, now or timezone.now()) | {
        "version": provider.version,
        "limits": {
            "areas_locked": provider.areas_locked,
            "max_daily_cap": provider.max_daily_cap,
            "max_weekly_cap": provider.max_weekly_cap,
            "quota": provider.quota,
        },
    }
