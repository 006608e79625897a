"""The read API (SPEC §4): GET /api/leads, /api/leads/{id}, /api/providers, /api/services."""

import pytest
from django.core.serializers.json import DjangoJSONEncoder

from allocation.models import Lead
from allocation.services import LeadInput, submit_lead
from credentials.services import create_api_key
from providers.models import Membership, PoolCursor, Provider, Service
from providers.tests.factories import MembershipFactory, ProviderFactory, ServiceFactory


@pytest.fixture
def key_headers(db):
    _, raw = create_api_key(name="reader")
    return {"Authorization": f"Bearer {raw}"}


def submit(service_id, n, **fields):
    return submit_lead(
        LeadInput(
            service_id=service_id,
            name=fields.get("name", f"Customer {n}"),
            phone=f"+1555{n:07d}",
            city="Springfield",
            description=fields.get("description", ""),
            source="test",
        )
    )


def iso(value):
    return DjangoJSONEncoder().default(value)


def get(client, path, headers, **params):
    return client.get(path, params, headers=headers)


# --- GET /api/leads ------------------------------------------------------------------------------


def test_lead_list_is_newest_first_with_the_count_and_every_field(client, seeded, key_headers):
    first = submit(1, 1, description="call after 5")
    second = submit(3, 2)

    response = get(client, "/api/leads", key_headers)

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    assert [item["id"] for item in body["items"]] == [second.pk, first.pk]
    assert body["items"][1] == {
        "id": first.pk,
        "status": "allocated",
        "service": {"id": 1, "slug": "service-1", "name": "Service 1"},
        "providers": [
            {"id": 1, "name": "Provider 1", "role": "mandatory"},
            {"id": 2, "name": "Provider 2", "role": "pool"},
            {"id": 3, "name": "Provider 3", "role": "pool"},
        ],
        "created_at": iso(first.created_at),
        "name": "Customer 1",
        "phone": "+15550000001",
        "city": "Springfield",
        "city_key": "springfield",
        "description": "call after 5",
        "source": "test",
        "wait_reason": None,
        "allocated_at": iso(Lead.objects.get(pk=first.pk).allocated_at),
        "expired_at": None,
    }


def test_waiting_lead_is_listed_with_no_providers_and_its_reason(client, seeded, key_headers):
    Provider.objects.update(remaining_quota=0)
    lead = submit(1, 1)

    item = get(client, "/api/leads", key_headers).json()["items"][0]

    assert (item["id"], item["status"], item["providers"]) == (lead.pk, "waiting", [])
    assert (item["wait_reason"], item["allocated_at"]) == ("not_enough_providers", None)


def test_pages_follow_each_other_without_overlap_or_gap(client, seeded, key_headers):
    ids = [submit(1 + n % 3, n).pk for n in range(7)]

    pages = [
        get(client, "/api/leads", key_headers, limit=3, offset=offset).json()
        for offset in (0, 3, 6, 9)
    ]

    assert [[item["id"] for item in page["items"]] for page in pages] == [
        ids[::-1][0:3],
        ids[::-1][3:6],
        ids[::-1][6:7],
        [],
    ]
    assert {page["count"] for page in pages} == {7}


def test_limit_defaults_to_50(client, seeded, key_headers):
    Provider.objects.update(quota=100, remaining_quota=100)
    for n in range(51):
        submit(2, n)

    body = get(client, "/api/leads", key_headers).json()

    assert (len(body["items"]), body["count"]) == (50, 51)


@pytest.mark.parametrize("service", ["3", "service-3"])
def test_leads_filter_by_service_id_or_slug(client, seeded, key_headers, service):
    submit(1, 1)
    wanted = submit(3, 2)

    body = get(client, "/api/leads", key_headers, service=service).json()

    assert ([item["id"] for item in body["items"]], body["count"]) == ([wanted.pk], 1)


def test_leads_of_an_inactive_service_can_still_be_listed(client, seeded, key_headers):
    lead = submit(2, 1)
    Service.objects.filter(pk=2).update(active=False)

    body = get(client, "/api/leads", key_headers, service="service-2").json()

    assert [item["id"] for item in body["items"]] == [lead.pk]


def test_leads_filter_by_status(client, seeded, key_headers):
    allocated = submit(1, 1)
    Provider.objects.update(remaining_quota=0)
    waiting = submit(1, 2)

    by_status = {
        status: [
            i["id"] for i in get(client, "/api/leads", key_headers, status=status).json()["items"]
        ]
        for status in ("allocated", "waiting")
    }

    assert by_status == {"allocated": [allocated.pk], "waiting": [waiting.pk]}


def test_leads_filter_by_provider(client, seeded, key_headers):
    with_p2 = submit(1, 1)  # P1 + P2, P3
    without_p2 = submit(1, 2)  # P1 + P4, P2 -> has P2 too
    third = submit(1, 3)  # P1 + P3, P4

    p2 = [i["id"] for i in get(client, "/api/leads", key_headers, provider=2).json()["items"]]
    p5 = get(client, "/api/leads", key_headers, provider=5).json()

    assert p2 == [without_p2.pk, with_p2.pk]
    assert third.pk not in p2
    assert (p5["items"], p5["count"]) == ([], 0)


def test_filters_combine(client, seeded, key_headers):
    submit(1, 1)
    wanted = submit(3, 2)
    Provider.objects.update(remaining_quota=0)
    submit(3, 3)

    body = get(
        client, "/api/leads", key_headers, service="service-3", status="allocated", provider=4
    ).json()

    assert [item["id"] for item in body["items"]] == [wanted.pk]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"limit": -1}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": "x"}, "offset"),
        ({"offset": 2**64}, "offset"),
        ({"status": "lost"}, "status"),
        ({"provider": "one"}, "provider"),
        ({"provider": 0}, "provider"),
        ({"provider": 2**64}, "provider"),
        ({"provider": 99}, "provider"),
        ({"service": "99"}, "service"),
        ({"service": str(2**70)}, "service"),
        ({"service": "no-such-service"}, "service"),
        ({"service": "bad slug!"}, "service"),
        ({"service": "a\x00b"}, "service"),
        ({"service": ""}, "service"),
    ],
)
def test_invalid_query_parameters_are_422_keyed_by_the_parameter(
    client, seeded, key_headers, params, field
):
    response = get(client, "/api/leads", key_headers, **params)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert list(error["fields"]) == [field]


@pytest.mark.parametrize("path", ["/api/providers", "/api/services"])
@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 201}, {"offset": -1}])
def test_other_lists_validate_their_pagination_too(client, seeded, key_headers, path, params):
    response = get(client, path, key_headers, **params)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


def test_limit_of_200_is_accepted(client, seeded, key_headers):
    response = get(client, "/api/leads", key_headers, limit=200)

    assert response.status_code == 200


# --- GET /api/leads/{id} -------------------------------------------------------------------------


def test_lead_detail_has_its_providers_in_selection_order_and_its_trace(
    client, seeded, key_headers
):
    submit(1, 1)
    Provider.objects.filter(pk=4).update(remaining_quota=0)
    lead = submit(1, 2)  # P1, then the walk after P3: P4 (no quota), P2, P3

    response = get(client, f"/api/leads/{lead.pk}", key_headers)

    assert response.status_code == 200
    body = response.json()
    assert [(p["id"], p["role"]) for p in body["providers"]] == [
        (1, "mandatory"),
        (2, "pool"),
        (3, "pool"),
    ]
    assert body["trace"] == [
        {"provider_id": 1, "role": "mandatory", "outcome": "selected", "reason": None},
        {"provider_id": 4, "role": "pool", "outcome": "skipped", "reason": "no_quota"},
        {"provider_id": 2, "role": "pool", "outcome": "selected", "reason": None},
        {"provider_id": 3, "role": "pool", "outcome": "selected", "reason": None},
    ]
    assert body["name"] == "Customer 2"


@pytest.mark.parametrize("lead_id", ["999999", str(2**63 - 1), str(2**63), str(2**80)])
def test_unknown_lead_is_404_not_found(client, seeded, key_headers, lead_id):
    response = get(client, f"/api/leads/{lead_id}", key_headers)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "path", ["/api/leads/abc", "/api/leads/-1", "/api/leads/1/", "/api/leads/"]
)
def test_malformed_lead_paths_are_404_in_the_error_shape(client, seeded, key_headers, path):
    response = get(client, path, key_headers)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


# --- GET /api/providers --------------------------------------------------------------------------


def test_providers_list_has_exactly_the_spec_fields_newest_first(client, seeded, key_headers):
    submit(1, 1)

    body = get(client, "/api/providers", key_headers).json()

    assert body["count"] == 8
    assert [item["id"] for item in body["items"]] == [8, 7, 6, 5, 4, 3, 2, 1]
    assert body["items"][-1] == {
        "id": 1,
        "name": "Provider 1",
        "status": "active",
        "quota": 10,
        "remaining_quota": 9,
        "cycle": 1,
        "leads_this_cycle": 1,
        "leads_total": 1,
        # SPEC §2a: the routing rules, the cap counts (local day, ISO week), and now
        "routing": {
            "cities": [],
            "timezone": "UTC",
            "hours": "",
            "time_off": [],
            "daily_cap": None,
            "weekly_cap": None,
            "leads_today": 1,
            "leads_this_week": 1,
        },
        "eligible_now": True,
        "not_eligible_reason": None,
        "eligible_again_at": None,
    }


def test_providers_list_paginates(client, seeded, key_headers):
    body = get(client, "/api/providers", key_headers, limit=3, offset=6).json()

    assert ([item["id"] for item in body["items"]], body["count"]) == ([2, 1], 8)


# --- GET /api/services ---------------------------------------------------------------------------


def services_by_id(client, headers):
    return {item["id"]: item for item in get(client, "/api/services", headers).json()["items"]}


def test_services_list_the_seed_line_up(client, seeded, key_headers):
    body = get(client, "/api/services", key_headers).json()

    assert body["count"] == 3
    assert body["items"] == [
        {
            "id": 3,
            "slug": "service-3",
            "name": "Service 3",
            "active": True,
            "mandatory": [1, 4],
            "pool": [2, 3, 5, 6, 7, 8],
            "next_pool_provider": 2,
        },
        {
            "id": 2,
            "slug": "service-2",
            "name": "Service 2",
            "active": True,
            "mandatory": [5],
            "pool": [6, 7, 8],
            "next_pool_provider": 6,
        },
        {
            "id": 1,
            "slug": "service-1",
            "name": "Service 1",
            "active": True,
            "mandatory": [1],
            "pool": [2, 3, 4],
            "next_pool_provider": 2,
        },
    ]


def test_next_pool_provider_follows_the_cursor_and_wraps(client, seeded, key_headers):
    submit(1, 1)  # P2, P3: cursor on P3
    after_first = services_by_id(client, key_headers)[1]["next_pool_provider"]
    submit(1, 2)  # P4, P2: cursor on P2 (wrapped)
    after_second = services_by_id(client, key_headers)[1]["next_pool_provider"]

    assert (after_first, after_second) == (4, 3)


def test_next_pool_provider_is_the_one_the_next_lead_takes_first(client, seeded, key_headers):
    submit(3, 1)
    predicted = services_by_id(client, key_headers)[3]["next_pool_provider"]

    lead = submit(3, 2)

    first_pool = lead.allocations.filter(role="pool").order_by("rank").first()
    assert first_pool.provider_id == predicted == 3


def test_next_pool_provider_skips_paused_and_exhausted_providers(client, seeded, key_headers):
    Provider.objects.filter(pk=2).update(status=Provider.Status.PAUSED)
    Provider.objects.filter(pk=3).update(remaining_quota=0)

    assert services_by_id(client, key_headers)[1]["next_pool_provider"] == 4


def test_next_pool_provider_is_null_when_no_pool_provider_is_eligible(client, seeded, key_headers):
    Provider.objects.filter(pk__in=[6, 7, 8]).update(remaining_quota=0)

    assert services_by_id(client, key_headers)[2]["next_pool_provider"] is None


def test_service_without_memberships_has_empty_line_up(client, db, key_headers):
    service = ServiceFactory(active=False)

    item = services_by_id(client, key_headers)[service.pk]

    assert (item["active"], item["mandatory"], item["pool"], item["next_pool_provider"]) == (
        False,
        [],
        [],
        None,
    )


# --- Query counts: the same at two sizes (no N+1) ----------------------------------------------


def grow_catalogue(services, pool_size):
    """Services with one mandatory provider and a pool each, and a lead per service."""
    for _ in range(services):
        service = ServiceFactory()
        MembershipFactory(service=service, mandatory=True, position=1)
        for position in range(1, pool_size + 1):
            MembershipFactory(service=service, position=position)
        assert PoolCursor.objects.filter(service=service).exists()
        submit(service.pk, Lead.objects.count() + 1000)


@pytest.mark.parametrize("size", [1, 6])
@pytest.mark.parametrize(
    ("path", "queries"),
    [
        # session + user, then count + page (+ allocations prefetch)
        ("/api/leads", 2 + 3),
        ("/api/leads?status=allocated&provider=1", 2 + 4),
        ("/api/leads?service=service-1", 2 + 4),
        ("/api/providers", 2 + 2),
        ("/api/services", 2 + 3),
    ],
)
def test_list_queries_do_not_grow_with_the_number_of_rows(
    admin_client, seeded, django_assert_num_queries, size, path, queries
):
    grow_catalogue(size, pool_size=size + 2)
    for n in range(size):
        submit(1 + n % 3, n)

    with django_assert_num_queries(queries):
        response = admin_client.get(path)

    assert response.status_code == 200
    assert len(response.json()["items"]) >= min(size, 2)


@pytest.mark.parametrize("pool_size", [3, 12])
def test_lead_detail_query_count_does_not_grow(
    admin_client, db, django_assert_num_queries, pool_size
):
    service = ServiceFactory()
    for position in range(1, pool_size + 1):
        MembershipFactory(service=service, position=position)
    lead = submit(service.pk, 1)

    # session + user, then the lead with its allocations, its deliveries and its returns
    with django_assert_num_queries(2 + 4):
        response = admin_client.get(f"/api/leads/{lead.pk}")

    assert len(response.json()["providers"]) == 3


def test_new_memberships_appear_in_position_order(client, db, key_headers):
    service = ServiceFactory()
    late, early = ProviderFactory(), ProviderFactory()
    MembershipFactory(service=service, provider=late, position=9)
    MembershipFactory(service=service, provider=early, position=2)
    MembershipFactory(
        service=service, provider=ProviderFactory(), role=Membership.Role.MANDATORY, position=1
    )

    item = services_by_id(client, key_headers)[service.pk]

    assert item["pool"] == [early.pk, late.pk]


@pytest.mark.parametrize("path", ["/api/leads", "/api/providers", "/api/services", "/api/leads/1"])
def test_a_mistyped_query_parameter_is_422_not_ignored(client, seeded, key_headers, path):
    submit(1, 1)

    response = client.get(path, {"stauts": "waiting"}, headers=key_headers)

    assert response.status_code == 422
    assert response.json()["error"]["fields"] == {"stauts": ["Unknown query parameter."]}


# --- GET /api/providers/{id}: routing rules and eligibility now (SPEC §2a) ---


def test_provider_detail_shows_its_rules_and_why_and_until_when_it_is_not_eligible(
    client, seeded, key_headers, monkeypatch
):
    from datetime import UTC, datetime

    from django.utils import timezone

    from providers.services import clean_routing, set_routing

    now = datetime(2026, 12, 7, 10, tzinfo=UTC)  # Monday, 11:00 in Oslo
    monkeypatch.setattr(timezone, "now", lambda: now)
    p2 = Provider.objects.get(pk=2)
    set_routing(
        p2,
        clean_routing(
            p2, cities=["Oslo"], tz="Europe/Oslo", hours="mon-fri 12:00-18:00", daily_cap=3
        ),
    )

    body = get(client, "/api/providers/2", key_headers).json()
    paused = Provider.objects.filter(pk=3).update(status="paused")
    body3 = get(client, "/api/providers/3", key_headers).json()

    assert body["routing"] == {
        "cities": ["oslo"],
        "timezone": "Europe/Oslo",
        "hours": "mon-fri 12:00-18:00",
        "time_off": [],
        "daily_cap": 3,
        "weekly_cap": None,
        "leads_today": 0,
        "leads_this_week": 0,
    }
    assert (body["eligible_now"], body["not_eligible_reason"]) == (False, "off_hours")
    assert body["eligible_again_at"] == "2026-12-07T11:00:00Z"
    assert paused == 1
    assert (body3["eligible_now"], body3["not_eligible_reason"], body3["eligible_again_at"]) == (
        False,
        "paused",
        None,
    )
    assert get(client, "/api/providers/99", key_headers).status_code == 404
