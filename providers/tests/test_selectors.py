"""The catalogue's reads for the dashboard: the pool window around the cursor, service names."""

from __future__ import annotations

import pytest

from providers.models import PoolCursor, Provider
from providers.selectors import pool_window, service_names, service_slugs

pytestmark = pytest.mark.django_db


def ids(rows) -> list[int]:
    return [row.provider_id for row in rows]


def test_pool_window_reads_each_kind_around_the_cursor_in_one_query(
    seeded, django_assert_num_queries
):
    # Service 3's pool: P2, P3, P5, P6, P7, P8 at positions 1-6; its cursor on P3.
    PoolCursor.objects.filter(service_id=3).update(position=2)
    Provider.objects.filter(pk=5).update(cycle=4, leads_this_cycle=3)

    with django_assert_num_queries(1):
        window = pool_window([3, 2], [5, None], window=2)

    service_3 = window[3]
    assert ids(service_3["after"]) == [5, 6]
    assert ids(service_3["wrap"]) == [2, 3]
    assert ids(service_3["cursor"]) == [3]
    assert service_3["next"] == service_3["after"][:1]
    p5 = service_3["next"][0]
    assert (p5.position, p5.name, p5.status, p5.cycle, p5.leads_this_cycle) == (
        3,
        "Provider 5",
        "active",
        4,
        3,
    )
    assert ids(window[2]["after"]) == [6, 7]  # no cursor yet: from the start
    assert window[2]["wrap"] == window[2]["cursor"] == window[2]["next"] == []


def test_pool_window_of_no_service_runs_no_query(django_assert_num_queries):
    with django_assert_num_queries(0):
        assert pool_window([], [], window=16) == {}


def test_service_names_and_slugs(seeded, django_assert_num_queries):
    with django_assert_num_queries(2):
        names = service_names([3, 1, 999])
        slugs = service_slugs()

    assert names == {1: "Service 1", 3: "Service 3"}
    assert slugs == [(1, "service-1"), (2, "service-2"), (3, "service-3")]
