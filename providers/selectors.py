"""Reads of the catalogue shared by several callers."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from django.conf import settings
from django.db import connection
from django.db.models import IntegerField, OuterRef, Prefetch, Subquery, Value
from django.db.models.functions import Coalesce

from leaddist.http.db import MAX_BIGINT
from providers import sql
from providers.models import Membership, Provider, Service
from providers.routing import format_time_off, local_time, open_again_at, time_reason


class _ActiveServices:
    """Active services by id or slug, remembered for SERVICE_CACHE_SECONDS in each process.

    Lead intake names a service on every request; this saves it a query. Only hits are kept:
    a service that is unknown or inactive is looked up again every time, so a new or
    reactivated service is found at once. What a hit may get wrong for a few seconds is a
    service deactivated meanwhile, which the engine checks again under its lock, and a new
    name or slug in the answer.
    """

    def __init__(self) -> None:
        self._found: dict[str, tuple[float, Service]] = {}
        self._lock = threading.Lock()

    def get(self, *, pk: int | None = None, slug: str | None = None) -> Service | None:
        key = f"id:{pk}" if pk is not None else f"slug:{slug}"
        now = time.monotonic()
        hit = self._found.get(key)
        if hit is not None and now - hit[0] < settings.SERVICE_CACHE_SECONDS:
            return hit[1]
        if pk is not None and not 0 < pk <= MAX_BIGINT:
            return None
        lookup = {"pk": pk} if pk is not None else {"slug": slug}
        service = Service.objects.active().filter(**lookup).first()
        with self._lock:
            if service is None:
                self._found.pop(key, None)
            else:
                if len(self._found) > 10_000:
                    self._found.clear()
                self._found[key] = (now, service)
        return service

    def clear(self) -> None:
        with self._lock:
            self._found.clear()


active_services = _ActiveServices()


# --- The next pool provider ------------------------------------------------------------------


def next_pool_provider(
    service: str, cursor_position: str, *, field: str = "provider_id"
) -> Coalesce:
    """For ``annotate()``: the first eligible pool provider after the cursor, wrapping around,
    which is where the next walk starts; None when no pool provider is eligible.

    ``service`` and ``cursor_position`` name the outer query's service id and cursor position;
    ``field`` is what to read of the membership (``provider_id``, ``provider__name``...). Two
    indexed reads per row (the partial index of eligible memberships), in the outer query.
    """
    eligible = (
        Membership.objects.pool()
        .filter(service_id=OuterRef(service), provider_eligible=True)
        .order_by("position")
        .values(field)
    )
    cursor = Coalesce(OuterRef(cursor_position), Value(-1), output_field=IntegerField())
    return Coalesce(Subquery(eligible.filter(position__gt=cursor)[:1]), Subquery(eligible[:1]))


def provider_list(*, limit: int, offset: int) -> tuple[list[Provider], int]:
    """A page of providers, newest first, and how many there are: two queries."""
    return (
        list(Provider.objects.order_by("-pk")[offset : offset + limit]),
        Provider.objects.count(),
    )


def service_list(*, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
    """A page of services, newest first, with their line-up and next pool provider: three
    queries."""
    services = (
        Service.objects.prefetch_related(
            Prefetch(
                "memberships",
                queryset=Membership.objects.select_related("provider").order_by("role", "position"),
            )
        )
        .annotate(next_pool_provider_id=next_pool_provider("pk", "cursor__position"))
        .order_by("-pk")[offset : offset + limit]
    )
    items = []
    for service in services:
        members = list(service.memberships.all())
        pool = [m for m in members if m.role == Membership.Role.POOL]
        items.append(
            {
                "id": service.pk,
                "slug": service.slug,
                "name": service.name,
                "active": service.active,
                "mandatory": [
                    m.provider_id for m in members if m.role == Membership.Role.MANDATORY
                ],
                "pool": [m.provider_id for m in pool],
                "next_pool_provider": service.next_pool_provider_id,
            }
        )
    return items, Service.objects.count()


# --- The dashboard's catalogue reads -----------------------------------------------------------


def service_names(service_ids: list[int]) -> dict[int, str]:
    """These services' names by id (unknown ids are left out): one query."""
    if not service_ids:
        return {}
    return dict(Service.objects.filter(pk__in=service_ids).values_list("pk", "name"))


def service_slugs() -> list[tuple[int, str]]:
    """Every service as (id, slug), by slug: one query."""
    return list(Service.objects.order_by("slug").values_list("pk", "slug"))


class PoolRow(NamedTuple):
    """A pool member as the dashboard's service card shows it, with its provider's state."""

    provider_id: int
    position: int
    name: str
    status: str
    quota: int
    remaining_quota: int
    leads_this_cycle: int
    cycle: int


def pool_window(
    service_ids: list[int], next_ids: list[int | None], *, window: int
) -> dict[int, dict[str, list[PoolRow]]]:
    """Per service (``next_ids``: each one's next pool provider, as ``next_pool_provider``
    annotates it): its pool rows by kind, "after" the cursor and from the start up to it
    ("wrap"), at most ``window`` of each in position order, the "cursor"'s own row and the
    "next" pool provider's. One query of a handful of indexed reads per service: nothing scans
    the whole pool."""
    rows: dict[int, dict[str, list[PoolRow]]] = {pk: defaultdict(list) for pk in service_ids}
    if not service_ids:
        return rows
    with connection.cursor() as cursor:
        cursor.execute(sql.POOL_WINDOW, {"ids": service_ids, "next": next_ids, "window": window})
        for service_id, kind, *row in cursor.fetchall():
            rows[service_id][kind].append(PoolRow(*row))
    return rows


# --- Routing rules (SPEC §2a) ------------------------------------------------------------------


@dataclass(frozen=True)
class RoutingStatus:
    """Whether a provider can take a lead now (whatever its city), and if not, why and until
    when (None: until someone changes something, e.g. resumes it or a reset restores quota)."""

    eligible: bool
    reason: str | None
    until: datetime | None


def routing_status(provider: Provider, now: datetime) -> RoutingStatus:
    """The provider's eligibility at ``now``, from its row: status, quota, then its time rules
    (SPEC §2a's precedence; the area depends on the lead's city and is left out)."""
    if provider.status != Provider.Status.ACTIVE:
        return RoutingStatus(False, "paused", None)
    if provider.remaining_quota <= 0:
        return RoutingStatus(False, "no_quota", None)
    rules, usage = provider.routing, provider.usage
    reason = time_reason(rules, usage, now)
    if reason is None:
        return RoutingStatus(True, None, None)
    return RoutingStatus(False, reason, open_again_at(rules, usage, now))


def provider_routing(provider: Provider, now: datetime) -> dict[str, Any]:
    """A provider's rules, its cap counts today and this week (local), and its status now: what
    the read API and the set_routing command show."""
    rules = provider.routing
    today = local_time(rules, now).date()
    leads_today, leads_this_week = provider.leads_on(today)
    status = routing_status(provider, now)
    return {
        "routing": {
            "cities": list(provider.cities),
            "timezone": rules.timezone,
            "hours": provider.hours,
            "time_off": [[a.isoformat(), b.isoformat()] for a, b in rules.time_off],
            "daily_cap": provider.daily_cap,
            "weekly_cap": provider.weekly_cap,
            "leads_today": leads_today,
            "leads_this_week": leads_this_week,
        },
        "eligible_now": status.eligible,
        "not_eligible_reason": status.reason,
        "eligible_again_at": status.until,
    }


def describe_routing(provider: Provider, now: datetime) -> list[str]:
    """The provider's routing rules and status as lines of text (set_routing's output)."""
    shown = provider_routing(provider, now)
    rules = shown["routing"]
    tz = rules["timezone"] + ("" if provider.timezone else " (the site's)")
    caps = [
        ("daily cap", rules["daily_cap"], rules["leads_today"], "today"),
        ("weekly cap", rules["weekly_cap"], rules["leads_this_week"], "this week"),
    ]
    lines = [
        f"{provider.name} (#{provider.pk})",
        f"  cities:     {', '.join(rules['cities']) or 'everywhere'}",
        f"  timezone:   {tz}",
        f"  hours:      {rules['hours'] or 'always'}",
        f"  time off:   {format_time_off(provider.routing.time_off) or 'none'}",
    ]
    for label, cap, used, when in caps:
        lines.append(f"  {label + ':':11} {'none' if cap is None else cap} ({used} lead(s) {when})")
    if shown["eligible_now"]:
        lines.append("  now:        eligible")
    else:
        until = shown["eligible_again_at"]
        when = f" until {local_time(provider.routing, until):%Y-%m-%d %H:%M %Z}" if until else ""
        lines.append(f"  now:        not eligible ({shown['not_eligible_reason']}){when}")
    return lines
