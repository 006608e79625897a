"""The live dashboard (SPEC §6): the page, the fragments it swaps in, a provider's leads.

The page and every live update render the same templates (``dashboard/_*.html``). SSE events
carry ids only; on an event the page asks ``/dashboard/fragments`` for the rows it names. The
fragments answer 401 or 403 once the session has ended, so that the page can say so.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from allocation.selectors import provider_allocations
from credentials.access import staff_fragment, staff_page
from dashboard.selectors import (
    FEED_SIZE,
    PROVIDERS_PER_PAGE,
    SERVICES_SHOWN,
    dashboard_summary,
    feed_items,
    forecast_cities,
    last_event,
    provider_page,
    provider_rows,
    recent_feed,
    service_cards,
    service_count,
)
from events.hub import stream_id
from providers.models import Provider

# The forecast panel (docs/DASHBOARD.md, Forecast): the leads shown per service, and how far
# ahead the page asks so that the provider rows can say when each provider runs out.
FORECAST_LEADS = 10
FORECAST_HORIZON = 100
# Ids one fragment request may name: a page of providers, and more events than the feed shows.
MAX_FRAGMENT_IDS = max(PROVIDERS_PER_PAGE, 2 * FEED_SIZE)


def _ids(values: list[str]) -> list[int]:
    """Distinct positive integer ids from query values, in order; junk and extras ignored."""
    ids: list[int] = []
    for value in values:
        if value.isdigit() and int(value) > 0 and int(value) not in ids:
            ids.append(int(value))
    return ids[:MAX_FRAGMENT_IDS]


@never_cache
@require_GET
@staff_page
def dashboard(request: HttpRequest) -> HttpResponse:
    """Providers, services, fairness and the live feed, as committed in the database."""
    # The stream position is read before the data. An event committed in between is then both
    # rendered and replayed, and the page drops the duplicate; read after, it could be lost.
    latest = last_event()
    context = {
        "nav": "dashboard",
        "last_event_id": stream_id(latest.seq),
        "last_event": latest,
        "summary": dashboard_summary(),
        "providers": provider_page(request.GET.get("page")),
        "services": service_cards(),
        "services_total": service_count(),
        "services_shown": SERVICES_SHOWN,
        "feed": recent_feed(),
        "forecast_cities": forecast_cities(),
        "forecast_leads": FORECAST_LEADS,
        "forecast_horizon": FORECAST_HORIZON,
    }
    return render(request, "dashboard/dashboard.html", context)


@never_cache
@require_GET
@staff_fragment
def fragments(request: HttpRequest) -> HttpResponse:
    """The server-rendered pieces an event names: ?provider=ID&event=EID&services&summary, and
    &last=EID for the time of the newest event applied. With none, an empty 200: the page asks
    that to learn whether its session still holds."""
    provider_ids = _ids(request.GET.getlist("provider"))
    eids = _ids(request.GET.getlist("event"))
    last = _ids(request.GET.getlist("last"))[:1]
    context = {
        "last_event": last_event(last[0]) if last else None,
        "rows": provider_rows(provider_ids) if provider_ids else [],
        "feed": feed_items(eids) if eids else [],
        "summary": dashboard_summary() if "summary" in request.GET else None,
        "services": service_cards() if "services" in request.GET else None,
        "services_total": service_count() if "services" in request.GET else 0,
        "services_shown": SERVICES_SHOWN,
    }
    return render(request, "dashboard/_fragments.html", context)


@require_GET
@staff_page
def provider_leads(request: HttpRequest, provider_id: int) -> HttpResponse:
    """Every lead allocated to one provider, newest first, a page at a time."""
    provider = get_object_or_404(Provider, pk=provider_id)
    page = provider_allocations(provider, request.GET.get("page"))
    return render(
        request,
        "dashboard/provider_leads.html",
        {"provider": provider, "page": page, "nav": "dashboard"},
    )
