"""The live dashboard's reads (SPEC §6).

Each read costs a fixed number of queries, whatever the number of providers, services or leads:
lists are paginated or cut, and per-row details come from one query per kind (a LATERAL join
where "the latest few per row" is needed). The dashboard has no tables and runs no SQL of its
own: what needs hand-written SQL is read by each app's selectors, over its own tables, and put
together here."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.paginator import Page, Paginator
from django.db.models import Count, Prefetch, Q, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from allocation.engine import SLOTS
from allocation.models import Allocation, Lead
from allocation.selectors import latest_allocations, pool_leads, waiting_queue_heads
from delivery.selectors import delivery_rates, recent_latency
from events.models import Event
from events.types import FEED_TYPES
from providers.models import Membership, PoolCity, Provider, Service
from providers.routing import local_time
from providers.selectors import (
    PoolRow,
    next_pool_provider,
    pool_window,
    provider_routing,
    service_names,
    service_slugs,
)

PROVIDERS_PER_PAGE = 50
LATEST_LEADS_PER_PROVIDER = 3
SERVICES_SHOWN = 20
POOL_WINDOW = 16
FEED_SIZE = 30
DELIVERY_RATE_WINDOW = 100
WAITING_CITIES = 8
# Cities offered in the forecast's city field (docs/DASHBOARD.md, Forecast).
FORECAST_CITIES = 100


@dataclass(frozen=True)
class LatestLead:
    lead_id: int
    service_name: str
    created_at: datetime


@dataclass(frozen=True)
class ProviderRow:
    provider: Provider
    latest: list[LatestLead]
    # Of the provider's last DELIVERY_RATE_WINDOW finished deliveries (delivered or failed),
    # how many were delivered.
    delivered: int = 0
    finished: int = 0

    @property
    def success_percent(self) -> int:
        return round(100 * self.delivered / self.finished) if self.finished else 0

    @property
    def remaining_percent(self) -> int:
        quota = self.provider.quota
        return round(100 * self.provider.remaining_quota / quota) if quota else 0

    @property
    def routing(self) -> RoutingRow:
        """Its area, open or closed now (and when it opens), its caps used (SPEC §2a)."""
        return routing_row(self.provider, timezone.now())

    @property
    def level(self) -> str:
        """ "empty", "low" or "ok": how full the remaining-quota bar is, for its colour."""
        if self.provider.remaining_quota == 0:
            return "empty"
        return "low" if self.remaining_percent <= 30 else "ok"


@dataclass(frozen=True)
class RoutingRow:
    area: str
    open: bool
    reason: str | None
    opens: str  # when it takes leads again, in its own timezone; '' if not by time alone
    caps: str  # "today 2/5 · week 7/20"; '' without caps


def routing_row(provider: Provider, now: datetime) -> RoutingRow:
    """What a provider's dashboard row shows of its routing rules at ``now``."""
    shown = provider_routing(provider, now)
    rules = shown["routing"]
    until = shown["eligible_again_at"]
    opens = ""
    if until is not None:
        opens = f"{local_time(provider.routing, until):%a %d %b %H:%M %Z}"
    caps = []
    if rules["daily_cap"] is not None:
        caps.append(f"today {rules['leads_today']}/{rules['daily_cap']}")
    if rules["weekly_cap"] is not None:
        caps.append(f"week {rules['leads_this_week']}/{rules['weekly_cap']}")
    return RoutingRow(
        area=", ".join(rules["cities"]) or "everywhere",
        open=shown["eligible_now"],
        reason=shown["not_eligible_reason"],
        opens=opens,
        caps=" · ".join(caps),
    )


@dataclass(frozen=True)
class Summary:
    waiting: int
    allocated: int
    providers: int
    active: int
    paused: int
    exhausted: int
    quota: int
    remaining_quota: int
    leads_this_cycle: int
    # Speed to lead over the last SPEED_WINDOW seconds: allocation to the provider's 2xx.
    delivery_p50: float | None = None
    delivery_p99: float | None = None
    delivered_recently: int = 0
    # The largest waiting queues: (service name, canonical city, leads), at most WAITING_CITIES.
    waiting_by_city: list[tuple[str, str, int]] = field(default_factory=list)


@dataclass(frozen=True)
class Chip:
    """One provider as a service card shows it."""

    provider_id: int
    name: str
    status: str
    quota: int
    remaining_quota: int
    leads_this_cycle: int
    position: int
    is_cursor: bool = False
    is_next: bool = False
    # Pool chips only: the leads this service's pool gave the provider in its current cycle.
    pool_leads: int = 0

    @property
    def eligible(self) -> bool:
        return self.status == Provider.Status.ACTIVE and self.remaining_quota > 0


@dataclass(frozen=True)
class ServiceCard:
    service: Service
    cursor: int | None
    mandatory: list[Chip]
    pool: list[Chip]  # the whole pool in position order, or a window in walk order
    pool_size: int
    windowed: bool
    last_picked: Chip | None
    next_provider: Chip | None
    waiting: int

    @property
    def hidden(self) -> int:
        return self.pool_size - len(self.pool)

    @property
    def low(self) -> int:
        """The fewest leads this pool gave one of the providers shown, this cycle."""
        return min((chip.pool_leads for chip in self.pool), default=0)

    @property
    def high(self) -> int:
        return max((chip.pool_leads for chip in self.pool), default=0)

    @property
    def chart_max(self) -> int:
        return max(self.high, 1)


@dataclass(frozen=True)
class TraceLine:
    provider_id: int
    name: str
    role: str
    outcome: str
    reason: str


@dataclass(frozen=True)
class FeedItem:
    eid: int
    type: str
    created: datetime
    data: dict[str, Any]
    lead: Lead | None = None
    trace: list[TraceLine] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.type.replace(".", "-")

    def deliveries_by_provider(self) -> list[tuple[Allocation, list[Any]]]:
        """Each allocation of the lead with its deliveries (none: the provider had no
        endpoint when the lead was allocated), from what the feed prefetched."""
        if self.lead is None:
            return []
        deliveries = sorted(self.lead.deliveries.all(), key=lambda d: (d.rank, d.channel))
        return [
            (allocation, [d for d in deliveries if d.provider_id == allocation.provider_id])
            for allocation in self.lead.allocations.all()
        ]


# The window of the dashboard's speed-to-lead figures (and of the alert in OPERATIONS.md).
SPEED_WINDOW = 300


def dashboard_summary() -> Summary:
    """Totals over every provider, the waiting-queue size and its largest (service, city)
    queues, and speed to lead: four queries."""
    active = Q(status=Provider.Status.ACTIVE)
    totals = Provider.objects.aggregate(
        providers=Count("pk"),
        active=Count("pk", filter=active),
        exhausted=Count("pk", filter=Q(remaining_quota=0)),
        quota=Coalesce(Sum("quota"), 0),
        remaining_quota=Coalesce(Sum("remaining_quota"), 0),
        leads_this_cycle=Coalesce(Sum("leads_this_cycle"), 0),
        allocations=Coalesce(Sum("leads_total"), 0),
    )
    allocations = totals.pop("allocations")
    p50, p99, delivered = recent_latency(window=SPEED_WINDOW)
    # Per (service, city): the queues of SPEC §2a, through lead_waiting_queue.
    by_city = (
        Lead.objects.waiting()
        .values_list("service__name", "city_key")
        .annotate(n=Count("pk"))
        .order_by("-n", "service__name", "city_key")[:WAITING_CITIES]
    )
    return Summary(
        delivery_p50=p50,
        delivery_p99=p99,
        delivered_recently=delivered,
        waiting_by_city=list(by_city),
        # Through the partial index lead_waiting_queue, however many leads are stored.
        waiting=Lead.objects.waiting().count(),
        # Every allocated lead has exactly SLOTS allocations (a DB invariant).
        allocated=allocations // SLOTS,
        paused=totals["providers"] - totals["active"],
        **totals,
    )


def latest_leads(provider_ids: list[int], *, per_provider: int) -> dict[int, list[LatestLead]]:
    """The newest allocations of each provider, with their services' names: two queries (the
    allocations through the (provider, -id) index, then the names), none without providers."""
    if not provider_ids:
        return {}
    allocations = latest_allocations(provider_ids, per_provider=per_provider)
    names = service_names(sorted({s for rows in allocations.values() for _, s, _ in rows}))
    return {
        pk: [LatestLead(lead_id, names.get(s, ""), at) for lead_id, s, at in rows]
        for pk, rows in allocations.items()
    }


def _provider_rows(providers: list[Provider]) -> list[ProviderRow]:
    ids = [p.pk for p in providers]
    latest = latest_leads(ids, per_provider=LATEST_LEADS_PER_PROVIDER)
    rates = delivery_rates(ids, window=DELIVERY_RATE_WINDOW)
    return [ProviderRow(p, latest.get(p.pk, []), *rates.get(p.pk, (0, 0))) for p in providers]


def provider_page(page_number: object, *, per_page: int = PROVIDERS_PER_PAGE) -> Page:
    """One page of providers by id, each row with its latest leads and its delivery rate: five
    queries."""
    paginator = Paginator(Provider.objects.order_by("pk"), per_page)
    page = paginator.get_page(page_number)
    page.object_list = _provider_rows(list(page.object_list))
    return page


def provider_rows(provider_ids: list[int]) -> list[ProviderRow]:
    """These providers' rows (unknown ids are left out): four queries."""
    return _provider_rows(list(Provider.objects.filter(pk__in=provider_ids).order_by("pk")))


def _chip(
    row: PoolRow,
    cursor: int | None,
    next_id: int | None,
    given: dict[tuple[int, int, int], int],
    service_id: int,
) -> Chip:
    """``given``: what each (service, provider, cycle)'s pool gave (allocation's pool_leads)."""
    return Chip(
        row.provider_id,
        row.name,
        row.status,
        row.quota,
        row.remaining_quota,
        row.leads_this_cycle,
        row.position,
        is_cursor=cursor is not None and row.position == cursor,
        is_next=row.provider_id == next_id,
        pool_leads=given.get((service_id, row.provider_id, row.cycle), 0),
    )


def service_cards(*, limit: int = SERVICES_SHOWN, window: int = POOL_WINDOW) -> list[ServiceCard]:
    """Each service with its mandatory providers, its pool around the cursor with what the pool
    gave each of them this cycle, the next provider in line and its waiting leads: seven
    queries.

    What the pool gave each provider counts the leads this service's pool gave it in its
    current cycle: a provider's leads_this_cycle adds up every service and its mandatory
    places, which says nothing about how fairly one pool turns."""
    services = list(
        Service.objects.select_related("cursor")
        .annotate(next_pool_provider_id=next_pool_provider("pk", "cursor__position"))
        .order_by("pk")[:limit]
    )
    ids = [s.pk for s in services]
    if not ids:
        return []
    mandatory: dict[int, list[Chip]] = defaultdict(list)
    for m in (
        Membership.objects.mandatory()
        .filter(service_id__in=ids)
        .select_related("provider")
        .order_by("service_id", "position")
    ):
        p = m.provider
        mandatory[m.service_id].append(
            Chip(p.pk, p.name, p.status, p.quota, p.remaining_quota, p.leads_this_cycle, m.position)
        )
    pool_sizes = dict(
        Membership.objects.pool()
        .filter(service_id__in=ids)
        .values("service_id")
        .annotate(size=Count("pk"))
        .values_list("service_id", "size")
    )
    waiting = dict(
        Lead.objects.waiting()
        .filter(service_id__in=ids)
        .values("service_id")
        .annotate(n=Count("pk"))
        .values_list("service_id", "n")
    )
    # The pool window is the catalogue's (providers), what the pool gave is the engine's
    # (allocation): one query each, for every service shown.
    pool_rows = pool_window(ids, [s.next_pool_provider_id for s in services], window=window)
    given = pool_leads(
        (service_id, row.provider_id, row.cycle)
        for service_id, kinds in pool_rows.items()
        for rows in kinds.values()
        for row in rows
    )

    cards = []
    for service in services:
        cursor_row = getattr(service, "cursor", None)
        cursor = cursor_row.position if cursor_row is not None else None
        rows = pool_rows[service.pk]
        next_row = (rows["next"] or [None])[0]
        next_id = next_row.provider_id if next_row else None

        at = (cursor, next_id, given, service.pk)
        size = pool_sizes.get(service.pk, 0)
        windowed = size > window
        if windowed:
            walk = rows["cursor"] + [
                r for r in rows["after"] + rows["wrap"] if r.position != cursor
            ]
            pool = [_chip(r, *at) for r in walk[:window]]
        else:
            pool = [
                _chip(r, *at)
                for r in sorted(rows["after"] + rows["wrap"], key=lambda r: r.position)
            ]
        cards.append(
            ServiceCard(
                service=service,
                cursor=cursor,
                mandatory=mandatory[service.pk],
                pool=pool,
                pool_size=size,
                windowed=windowed,
                last_picked=next((_chip(r, *at) for r in rows["cursor"]), None),
                next_provider=_chip(next_row, *at) if next_row else None,
                waiting=waiting.get(service.pk, 0),
            )
        )
    return cards


def service_count() -> int:
    return Service.objects.count()


def forecast_cities(*, limit: int = FORECAST_CITIES) -> list[str]:
    """The cities named in some pool provider's area (canonical, as the forecast compares
    them), alphabetically: one query."""
    return list(
        PoolCity.objects.exclude(city="")
        .values_list("city", flat=True)
        .distinct()
        .order_by("city")[:limit]
    )


def _trace_lines(lead: Lead | None, names: dict[int, str]) -> list[TraceLine]:
    entries = [
        entry
        for entry in (lead.trace if lead is not None else None) or []
        if isinstance(entry, dict)
    ]
    return [
        TraceLine(
            entry.get("provider_id"),
            names.get(entry.get("provider_id"), f"#{entry.get('provider_id')}"),
            entry.get("role", ""),
            entry.get("outcome", ""),
            entry.get("reason", ""),
        )
        for entry in entries
    ]


def _feed_items(events: list[Event]) -> list[FeedItem]:
    """Feed items for logged events, with their leads, allocations, deliveries and the names
    in their traces: four more queries at most, for any number of events."""
    parsed = [(event, event.data if isinstance(event.data, dict) else {}) for event in events]
    lead_ids = {data["lead_id"] for _, data in parsed if "lead_id" in data}
    leads: dict[int, Lead] = {}
    if lead_ids:
        leads = {
            lead.pk: lead
            for lead in Lead.objects.filter(pk__in=lead_ids)
            .select_related("service")
            .prefetch_related(
                Prefetch(
                    "allocations",
                    queryset=Allocation.objects.select_related("provider").order_by("rank"),
                ),
                "deliveries",  # the delivery app's rows, by their relation to the lead
            )
        }
    traced = {
        entry.get("provider_id")
        for lead in leads.values()
        for entry in lead.trace or []
        if isinstance(entry, dict)
    }
    names = dict(Provider.objects.filter(pk__in=traced).values_list("pk", "name")) if traced else {}
    items = []
    for event, data in parsed:
        lead = leads.get(data.get("lead_id"))
        items.append(
            FeedItem(event.seq, event.type, event.created_at, data, lead, _trace_lines(lead, names))
        )
    return items


@dataclass(frozen=True)
class LastEvent:
    """The newest event a page has applied: its stream position and when it happened."""

    seq: int
    created: datetime | None


def last_event(seq: int | None = None) -> LastEvent:
    """The event at this stream position, or the newest one; seq 0 when there is none: one
    query."""
    events = Event.objects.published()
    events = events.filter(seq=seq) if seq is not None else events.order_by("-seq")
    row = events.values_list("seq", "created_at").first()
    return LastEvent(*row) if row else LastEvent(0, None)


def recent_feed(*, limit: int = FEED_SIZE) -> list[FeedItem]:
    """The latest allocations, waiting leads and resets, newest first, from the event log."""
    feed = Event.objects.published().filter(type__in=FEED_TYPES)
    return _feed_items(list(feed.order_by("-seq")[:limit]))


def feed_items(eids: list[int]) -> list[FeedItem]:
    """The feed items at these stream positions (others are left out), oldest first."""
    return _feed_items(list(Event.objects.published().filter(type__in=FEED_TYPES, seq__in=eids)))


@dataclass(frozen=True)
class WaitingQueue:
    slug: str
    waiting: int
    oldest_age_seconds: float  # 0 when nothing waits


def waiting_queues() -> list[WaitingQueue]:
    """Every service's waiting queue, empty ones included, by slug (for /metrics): two queries,
    the services, then their queues."""
    services = service_slugs()
    heads = waiting_queue_heads([pk for pk, _ in services])
    return [WaitingQueue(slug, *heads.get(pk, (0, 0.0))) for pk, slug in services]
