"""SPEC §6: /dashboard, its fragments and a provider's leads, for staff only."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from allocation.models import Allocation, Lead
from allocation.services import submit_lead
from dashboard.tests.support import lead_input, settle_events, stream_position
from events.hub import stream_id
from events.models import Event
from events.services import record_event
from events.types import LEAD_ALLOCATED, QUOTA_RESET
from providers.models import Membership, PoolCursor, Provider, Service
from providers.services import create_service
from webhooks.services import apply_quota_reset

STAFF_PAGES = [
    "/dashboard",
    "/dashboard/providers/1/leads",
    "/test-tools",
]


# --- Access ----------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("path", STAFF_PAGES)
def test_anonymous_users_are_sent_to_the_login_page(seeded, path):
    response = Client().get(path)

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=")


@pytest.mark.django_db
@pytest.mark.parametrize("path", STAFF_PAGES)
def test_signed_in_non_staff_users_get_403(seeded, plain_client, path):
    response = plain_client.get(path)

    assert response.status_code == 403


@pytest.mark.django_db
@pytest.mark.parametrize("path", [*STAFF_PAGES, "/dashboard/fragments?summary=1"])
def test_staff_users_get_the_page(seeded, staff_client, path):
    response = staff_client.get(path)

    assert response.status_code == 200


@pytest.mark.django_db
def test_fragments_answer_401_once_the_session_has_ended_not_the_login_page(seeded, staff_client):
    staff_client.logout()

    response = staff_client.get("/dashboard/fragments?summary=1")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


@pytest.mark.django_db
def test_fragments_answer_403_to_non_staff(seeded, plain_client):
    response = plain_client.get("/dashboard/fragments?summary=1")

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


@pytest.mark.django_db
def test_fragments_with_nothing_named_are_an_empty_page_for_the_session_probe(seeded, staff_client):
    response = staff_client.get("/dashboard/fragments")

    assert response.status_code == 200
    assert "<template" not in response.content.decode()


# --- Content ---------------------------------------------------------------------------------


def allocate(service_id: int, count: int, *, start: int = 0) -> list[Lead]:
    """Allocate leads, their events numbered as if each had committed."""
    leads = [
        submit_lead(lead_input(service_id, phone=f"+1555{service_id}{n:06d}"))
        for n in range(start, start + count)
    ]
    settle_events()
    return leads


def current_event_id() -> str:
    return stream_id(stream_position())


@pytest.mark.django_db
def test_dashboard_shows_quotas_counters_and_latest_leads(seeded, staff_client):
    first, second = allocate(1, 2)

    page = staff_client.get("/dashboard").content.decode()

    # P1 had both leads: 8 of 10 left, 2 this cycle and in all, newest first.
    row = page.split('id="provider-1"')[1].split("</tr>")[0]
    assert 'data-remaining="8"' in row
    assert '<rect class="bar-fill" width="80"' in row
    assert '<strong>2</strong> <span class="muted">cycle 1</span>' in row
    assert row.index(f">#{second.pk}</a>") < row.index(f">#{first.pk}</a>")
    assert "/dashboard/providers/1/leads" in row


@pytest.mark.django_db
def test_dashboard_shows_each_service_cursor_and_next_provider(seeded, staff_client):
    allocate(1, 1)  # P1 + (P2, P3): the cursor is on P3, P4 is next

    page = staff_client.get("/dashboard").content.decode()

    card = page.split('id="service-1"')[1].split("</article>")[0]
    assert "position 2, <strong>Provider 3</strong> picked last" in card
    assert 'data-next-provider="4">Provider 4<' in card
    assert card.index("Provider 2") < card.index("Provider 3") < card.index("Provider 4")


@pytest.mark.django_db
def test_dashboard_shows_the_waiting_queue_size(seeded, staff_client):
    Provider.objects.update(remaining_quota=0)
    allocate(2, 3)

    page = staff_client.get("/dashboard").content.decode()

    assert '<span class="stat-value" data-stat="waiting">3</span>' in page
    assert "3 waiting</span>" in page.split('id="service-2"')[1].split("</article>")[0]


@pytest.mark.django_db
def test_live_feed_lists_allocations_with_their_trace_waiting_leads_and_resets(
    seeded, staff_client
):
    (lead,) = allocate(1, 1)
    record_event(QUOTA_RESET, {"event_id": "evt_9", "provider_ids": None, "leads_allocated": 0})
    settle_events()

    feed = staff_client.get("/dashboard").content.decode().split("data-feed")[1]

    assert feed.index("Quota reset") < feed.index(f"Lead #{lead.pk}</strong> allocated")
    assert '<code class="feed-event-id" title="eventId">evt_9</code>' in feed
    assert "Decision trace · 3 steps" in feed
    assert feed.count('<span class="badge badge-selected">selected</span>') == 3


def fairness_bars(page: str, service_id: int) -> dict[str, int]:
    """Provider id -> the number the chart shows under this service's pool."""
    group = page.split(f'data-fairness-service="{service_id}"')[1].split("</figure>")[0]
    return {
        bar.split('"')[0]: int(bar.split('data-pool-leads="')[1].split('"')[0])
        for bar in group.split('data-pool-provider="')[1:]
    }


@pytest.mark.django_db
def test_fairness_chart_counts_what_each_pool_gave_its_providers_this_cycle(seeded, staff_client):
    # Services 1 and 3 share P2 and P3 in their pools; P4 is in Service 1's pool and is
    # mandatory in Service 3.
    allocate(1, 3)  # Service 1: P1 + (P2, P3), P1 + (P4, P2), P1 + (P3, P4)
    allocate(3, 2)  # Service 3: P1, P4 + P2, then P1, P4 + P3

    page = staff_client.get("/dashboard").content.decode()

    assert Provider.objects.get(pk=2).leads_this_cycle == 3
    assert Provider.objects.get(pk=4).leads_this_cycle == 4
    assert fairness_bars(page, 1) == {"2": 2, "3": 2, "4": 2}
    assert fairness_bars(page, 3) == {"2": 1, "3": 1, "5": 0, "6": 0, "7": 0, "8": 0}
    assert fairness_bars(page, 2) == {"6": 0, "7": 0, "8": 0}
    chart = page.split('id="fairness"')[1]
    assert "the leads its pool gave each of its pool providers in their current cycle" in chart
    service_1 = chart.split('data-fairness-service="1"')[1].split("</figure>")[0]
    assert "spread 2\N{EN DASH}2" in service_1
    assert 'next: <strong data-fairness-next="2">Provider 2</strong>' in service_1
    service_3 = chart.split('data-fairness-service="3"')[1].split("</figure>")[0]
    assert "spread 0\N{EN DASH}1" in service_3
    assert 'next: <strong data-fairness-next="5">Provider 5</strong>' in service_3


@pytest.mark.django_db
def test_fairness_chart_starts_a_provider_afresh_with_its_new_cycle(seeded, staff_client):
    allocate(1, 3)
    allocate(3, 2)
    apply_quota_reset(event_id="evt_p2", body_sha256="a" * 64, provider_ids=[2])
    allocate(3, 1, start=2)  # Service 3's walk goes on from its cursor: P1, P4 + P5

    page = staff_client.get("/dashboard").content.decode()

    assert fairness_bars(page, 1) == {"2": 0, "3": 2, "4": 2}
    assert fairness_bars(page, 3) == {"2": 0, "3": 1, "5": 1, "6": 0, "7": 0, "8": 0}


@pytest.mark.django_db
def test_a_reset_in_the_feed_keeps_its_count_in_one_piece(seeded, staff_client):
    record_event(
        QUOTA_RESET,
        {"event_id": "evt_" + "x" * 60, "provider_ids": None, "leads_allocated": 7},
    )
    settle_events()

    feed = staff_client.get("/dashboard").content.decode().split("data-feed")[1]

    note = feed.split('class="feed-note feed-reset-note"')[1].split("</div>")[0]
    assert '<code class="feed-event-id" title="eventId">evt_' in note
    assert '<span class="feed-reset-count">7 waiting leads allocated</span>' in note
    assert "\N{MIDDLE DOT}" not in note


@pytest.mark.django_db
def test_lead_text_is_escaped_on_the_dashboard(seeded, staff_client):
    submit_lead(
        lead_input(
            1,
            name="<img src=x onerror=alert(1)>",
            city="<b>Paris</b>",
            description="<script>alert('x')</script>",
        )
    )
    settle_events()

    page = staff_client.get("/dashboard").content.decode()

    assert "<script>alert" not in page
    assert "<img src=x" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


@pytest.mark.django_db
def test_page_renders_the_stream_position_and_loads_only_local_scripts(seeded, staff_client):
    allocate(1, 1)

    page = staff_client.get("/dashboard").content.decode()

    assert f'data-last-event-id="{current_event_id()}"' in page
    assert 'href="/admin/login/?next=/dashboard" hidden>sign in again</a>' in page
    assert '<script src="/static/js/dashboard.js" defer></script>' in page
    for forbidden in ("<script>", " onclick=", ' style="', "//cdn", "https://"):
        assert forbidden not in page


@pytest.mark.django_db
def test_fragments_render_the_named_rows_with_the_page_templates(seeded, staff_client):
    (lead,) = allocate(1, 1)
    eid = current_event_id().split(":")[1]

    response = staff_client.get(
        "/dashboard/fragments",
        {"provider": ["2", "99", "junk"], "event": eid, "services": "1", "summary": "1"},
    )

    html = response.content.decode()
    assert response.status_code == 200
    assert html.count("<template data-swap>") == 4  # provider 2, summary, services, fairness
    assert 'id="provider-2"' in html
    assert 'id="provider-99"' not in html
    assert f'id="event-{eid}"' in html
    assert f"Lead #{lead.pk}" in html
    for part in ('id="summary"', 'id="services"', 'id="fairness"'):
        assert part in html


@pytest.mark.django_db
def test_header_shows_the_time_of_the_last_event_not_its_stream_id(seeded, staff_client):
    allocate(1, 1)
    Event.objects.published().update(created_at=datetime(2026, 3, 4, 13, 14, 15, tzinfo=UTC))

    page = staff_client.get("/dashboard").content.decode()

    header = page.split('class="page-actions"')[1].split("</p>")[0]
    assert 'last event <time datetime="2026-03-04T13:14:15+00:00"' in header
    assert ">13:14:15</time>" in header
    assert "dashboard:" not in header


@pytest.mark.django_db
def test_header_says_when_there_is_no_event_yet(seeded, staff_client):
    page = staff_client.get("/dashboard").content.decode()

    assert "no events yet</span>" in page.split('class="page-actions"')[1]


@pytest.mark.django_db
def test_fragments_bring_the_time_of_the_newest_event_applied(seeded, staff_client):
    allocate(1, 1)
    eid = current_event_id().split(":")[1]
    Event.objects.published().update(created_at=datetime(2026, 3, 4, 9, 8, 7, tzinfo=UTC))

    html = staff_client.get("/dashboard/fragments", {"last": eid}).content.decode()

    assert '<template data-swap><span id="last-event"' in html
    assert ">09:08:07</time>" in html


@pytest.mark.django_db
def test_provider_leads_page_lists_every_lead_newest_first(seeded, staff_client):
    leads = allocate(1, 3)

    page = staff_client.get("/dashboard/providers/1/leads").content.decode()

    positions = [page.index(f">#{lead.pk}</a>") for lead in leads]
    assert positions == sorted(positions, reverse=True)


@pytest.mark.django_db
def test_unknown_provider_leads_page_is_404(seeded, staff_client):
    assert staff_client.get("/dashboard/providers/999/leads").status_code == 404


# --- Cost ------------------------------------------------------------------------------------


def build_catalogue(providers: int, *, leads_per_provider: int = 2) -> None:
    """Three services over ``providers`` providers (pool of all, 1 mandatory), with allocated
    leads and their feed events, written in bulk."""
    services = [create_service(slug=f"svc-{n}", name=f"Service {n}", pk=None) for n in range(1, 4)]
    made = Provider.objects.bulk_create(
        Provider(name=f"P{n}", quota=100, remaining_quota=100 - leads_per_provider)
        for n in range(providers)
    )
    Membership.objects.bulk_create(
        Membership(
            service=service,
            provider=provider,
            role=Membership.Role.MANDATORY if position == 1 else Membership.Role.POOL,
            position=position,
        )
        for service in services
        for position, provider in enumerate(made, start=1)
    )
    PoolCursor.objects.filter(service__in=services).update(position=providers // 2)
    now = timezone.now()
    leads = Lead.objects.bulk_create(
        Lead(
            service=services[n % 3],
            name=f"Lead {n}",
            phone=f"+1666{n:07d}",
            city="Town",
            status=Lead.Status.ALLOCATED,
            trace=[
                {"provider_id": made[(n + k) % providers].pk, "role": "pool", "outcome": "selected"}
                for k in range(3)
            ],
            allocated_at=now,
        )
        for n in range(providers * leads_per_provider // 3 * 3)
    )
    Allocation.objects.bulk_create(
        Allocation(lead=lead, provider=made[(n + k) % providers], role="pool", rank=k + 1, cycle=1)
        for n, lead in enumerate(leads)
        for k in range(3)
    )
    for lead in leads[-40:]:
        record_event(LEAD_ALLOCATED, {"lead_id": lead.pk, "service_id": lead.service_id})
    settle_events()


def clear_catalogue() -> None:
    Allocation.objects.all().delete()
    Lead.objects.all().delete()
    Service.objects.all().delete()
    Provider.objects.all().delete()


def fragments_url() -> str:
    provider = Provider.objects.order_by("pk").first().pk
    eid = current_event_id().split(":")[1]
    return f"/dashboard/fragments?provider={provider}&services=1&summary=1&event={eid}"


def dashboard_queries(client: Client) -> int:
    client.get("/dashboard")  # the session's first request may write the session
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/dashboard")
    assert response.status_code == 200
    return len(queries)


@pytest.mark.django_db
def test_dashboard_query_count_does_not_grow_with_providers_and_leads(
    staff_client, django_assert_num_queries
):
    build_catalogue(10)
    small = dashboard_queries(staff_client)
    clear_catalogue()

    build_catalogue(500)

    with django_assert_num_queries(small):
        response = staff_client.get("/dashboard")
    page = response.content.decode()
    assert page.count('class="provider-row') == 50  # paginated
    assert page.count('class="feed-item') == 30  # truncated
    assert "+483 more" in page  # pools of 499, 16 shown from the cursor
    assert "among the 16 shown of 499" in page.split('id="fairness"')[1]


@pytest.mark.django_db
def test_fragment_query_count_does_not_grow_with_providers(staff_client, django_assert_num_queries):
    build_catalogue(10)
    url = fragments_url()
    staff_client.get(url)  # the session's first request may write the session
    with CaptureQueriesContext(connection) as small:
        staff_client.get(url)
    clear_catalogue()
    build_catalogue(500)
    url = fragments_url()

    with django_assert_num_queries(len(small)):
        response = staff_client.get(url)

    assert response.content.decode().count("<template data-swap>") == 4


@pytest.mark.django_db
def test_admin_header_links_to_the_dashboard_and_test_tools(staff_client):
    page = staff_client.get("/admin/").content.decode()

    assert '<a href="/dashboard">Dashboard</a>' in page
    assert '<a href="/test-tools">Test tools</a>' in page
