"""The engine's reads for the dashboard: latest allocations, what each pool gave, waiting
queues; one query each, over allocation's own tables."""

from __future__ import annotations

import pytest

from allocation.models import Lead
from allocation.selectors import latest_allocations, pool_leads, waiting_queue_heads
from allocation.services import LeadInput, submit_lead
from allocation.tests.factories import LeadFactory

pytestmark = pytest.mark.django_db


def submit(service_id: int, n: int) -> Lead:
    return submit_lead(
        LeadInput(service_id=service_id, name="Ada", phone=f"+1555{n:07d}", city="Springfield")
    )


def test_latest_allocations_are_each_providers_newest_with_their_services(
    seeded, django_assert_num_queries
):
    leads = [submit(1, n) for n in range(3)] + [submit(3, n) for n in range(2)]

    with django_assert_num_queries(1):
        latest = latest_allocations([1, 2, 999], per_provider=2)

    assert [(lead, service) for lead, service, _ in latest[1]] == [
        (leads[4].pk, 3),
        (leads[3].pk, 3),
    ]
    # P2 got Service 1's first two leads and Service 3's first (SPEC's worked example).
    assert [(lead, service) for lead, service, _ in latest[2]] == [
        (leads[3].pk, 3),
        (leads[1].pk, 1),
    ]
    assert latest[999] == []
    assert latest[1][0][2] == leads[4].allocated_at


def test_pool_leads_count_one_services_pool_in_one_cycle(seeded, django_assert_num_queries):
    for n in range(3):
        submit(1, n)  # P1 + (P2, P3), P1 + (P4, P2), P1 + (P3, P4)
    for n in range(2):
        submit(3, n)  # P1, P4 + P2, then P1, P4 + P3

    with django_assert_num_queries(1):
        given = pool_leads([(1, 2, 1), (3, 2, 1), (1, 4, 1), (3, 4, 1), (1, 2, 2), (1, 2, 1)])

    assert given == {(1, 2, 1): 2, (3, 2, 1): 1, (1, 4, 1): 2, (3, 4, 1): 0, (1, 2, 2): 0}


def test_waiting_queue_heads_count_each_services_waiting_leads(seeded, django_assert_num_queries):
    LeadFactory(service=seeded.service(2))
    LeadFactory(service=seeded.service(2))

    with django_assert_num_queries(1):
        heads = waiting_queue_heads([1, 2])

    assert heads[1] == (0, 0.0)
    waiting, age = heads[2]
    assert waiting == 2
    assert 0 <= age < 60


def test_no_ids_run_no_query(django_assert_num_queries):
    with django_assert_num_queries(0):
        assert latest_allocations([], per_provider=3) == {}
        assert pool_leads([]) == {}
        assert waiting_queue_heads([]) == {}
