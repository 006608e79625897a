"""The number of providers per lead is defined once (allocation.engine.SLOTS); the database's
own copies of it (the commit-time trigger, the rank check) must agree."""

from __future__ import annotations

import re

import pytest
from django.db import connection

from allocation.engine import SLOTS
from allocation.models import Allocation

pytestmark = pytest.mark.django_db


def test_the_commit_trigger_counts_slots_allocations():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT prosrc FROM pg_proc WHERE proname = 'allocation_lead_check_allocations'"
        )
        (source,) = cursor.fetchone()
    counts = re.findall(r"lead_status = 'allocated' AND n <> (\d+)", source)
    assert counts == [str(SLOTS)]


def test_the_rank_check_allows_ranks_1_to_slots():
    (check,) = [
        c for c in Allocation._meta.constraints if c.name == "allocation_allocation_rank_1_to_3"
    ]
    assert dict(check.condition.children) == {"rank__gte": 1, "rank__lte": SLOTS}
