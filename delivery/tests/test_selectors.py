"""Delivery's read for the dashboard: each provider's delivery rate over its last deliveries."""

from __future__ import annotations

import pytest

from delivery.models import Delivery
from delivery.selectors import delivery_rates
from delivery.tests.support import plain_endpoint, submit

pytestmark = pytest.mark.django_db


def ids_of(provider_id: int) -> list[int]:
    return list(
        Delivery.objects.filter(provider_id=provider_id).order_by("pk").values_list("pk", flat=True)
    )


def set_status(pks: list[int], status: str) -> None:
    Delivery.objects.filter(pk__in=pks).update(status=status)


def test_delivery_rates_count_each_providers_last_finished_deliveries(
    seeded, django_assert_num_queries
):
    plain_endpoint(1, url="https://p1.example/hook")
    plain_endpoint(2, url="https://p2.example/hook")
    for n in range(4):
        submit(1, n)  # P1 gets all four leads, P2 three, P3 (no endpoint) no delivery
    p1 = ids_of(1)
    p2 = ids_of(2)
    set_status(p1[:2], "failed")
    set_status(p1[2:], "delivered")
    set_status(p2[:1], "delivered")
    set_status(p2[1:2], "failed")  # and its newest stays pending: not finished

    with django_assert_num_queries(1):
        rates = delivery_rates([1, 2, 3], window=3)

    assert len(ids_of(2)) == 3
    assert rates == {1: (2, 3), 2: (1, 2)}  # P1: its last three finished; P3: none


def test_delivery_rates_of_no_provider_run_no_query(django_assert_num_queries):
    with django_assert_num_queries(0):
        assert delivery_rates([], window=100) == {}
