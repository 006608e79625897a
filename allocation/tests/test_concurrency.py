"""Storms of leads on real PostgreSQL, with real threads; invariants checked from the database."""

from collections import Counter, defaultdict

import pytest
from django.db.models import Count, Q

from allocation.models import Allocation, Lead
from allocation.services import LeadInput, allocate_waiting_leads, submit_lead
from leaddist.testing import storm
from providers.models import Membership, PoolCursor, Provider, Service

pytestmark = pytest.mark.concurrency


def lead_jobs(count, service_ids, first=0):
    return [
        (
            lambda n=n: submit_lead(
                LeadInput(
                    service_id=service_ids[n % len(service_ids)],
                    name=f"Lead {n}",
                    phone=f"+1555{n:07d}",
                    city="Springfield",
                )
            )
        )
        for n in range(first, first + count)
    ]


def assert_invariants():
    """Everything the product promises about quotas and allocations, read from the database."""
    for p in Provider.objects.all():
        this_cycle = Allocation.objects.filter(provider=p, cycle=p.cycle).count()
        assert 0 <= p.remaining_quota <= p.quota
        assert p.remaining_quota == p.quota - this_cycle, p
        assert p.leads_this_cycle == this_cycle
        assert p.leads_total == Allocation.objects.filter(provider=p).count()

    counts = Lead.objects.annotate(
        n=Count("allocations"), distinct=Count("allocations__provider", distinct=True)
    )
    assert not counts.filter(status=Lead.Status.ALLOCATED).exclude(n=3).exists()
    assert not counts.filter(status=Lead.Status.ALLOCATED).exclude(distinct=3).exists()
    assert not counts.filter(status=Lead.Status.WAITING, n__gt=0).exists()

    # Each mandatory provider is in every allocated lead of its service until it runs out.
    for m in Membership.objects.mandatory().select_related("provider"):
        got = list(
            Lead.objects.allocated()
            .filter(service_id=m.service_id)
            .order_by("pk")
            .annotate(has=Count("allocations", filter=Q(allocations__provider=m.provider_id)))
            .values_list("has", flat=True)
        )
        if 0 in got:
            first_miss = got.index(0)
            assert all(h == 0 for h in got[first_miss:]), f"{m} came back after running out"
            assert not m.provider.is_eligible


def pool_counts(service_id):
    members = (
        Membership.objects.pool()
        .filter(service_id=service_id)
        .values_list("provider_id", flat=True)
    )
    counts = Counter(
        Allocation.objects.filter(lead__service_id=service_id, role="pool").values_list(
            "provider_id", flat=True
        )
    )
    return [counts.get(pid, 0) for pid in members]


@pytest.mark.django_db(transaction=True)
def test_storm_with_ample_quota_allocates_every_lead_fairly(seeded_tx):
    Provider.objects.update(quota=1000, remaining_quota=1000)

    errors = storm(lead_jobs(240, [1, 2, 3]))

    assert errors == []
    assert Lead.objects.count() == 240
    assert Lead.objects.allocated().count() == 240
    assert_invariants()
    for service_id in (1, 2, 3):
        counts = pool_counts(service_id)
        assert max(counts) - min(counts) <= 1, (service_id, counts)


@pytest.mark.django_db(transaction=True)
def test_storm_with_quotas_running_out_never_oversells(seeded_tx):
    errors = storm(lead_jobs(210, [1, 2, 3]))

    assert errors == []
    assert Lead.objects.count() == 210
    allocated = Lead.objects.allocated().count()
    assert 0 < allocated < 210
    assert Lead.objects.waiting().count() == 210 - allocated
    assert_invariants()
    # 80 units of quota, 3 per lead: at most 26 leads can have been served.
    assert allocated <= 26
    # Every service stopped only when it could no longer find 3 providers.
    for service in Service.objects.all():
        eligible = Provider.objects.eligible().filter(memberships__service=service).count()
        if Lead.objects.waiting().filter(service=service).exists():
            assert eligible < 3


@pytest.mark.django_db(transaction=True)
def test_services_sharing_a_large_pool_neither_oversell_nor_deadlock(db):
    """Three services walk one pool of 40 single-lead providers at once, so candidates read as
    eligible are often taken by another service before they can be locked."""
    services = [Service.objects.create(slug=f"s{i}", name=f"S{i}") for i in range(3)]
    providers = [
        Provider.objects.create(name=f"P{i}", quota=1, remaining_quota=1) for i in range(40)
    ]
    for service in services:
        PoolCursor.objects.create(service=service)
        Membership.objects.bulk_create(
            Membership(service=service, provider=p, role="pool", position=i)
            for i, p in enumerate(providers, start=1)
        )

    errors = storm(lead_jobs(60, [s.pk for s in services]))

    assert errors == []
    assert Lead.objects.count() == 60
    assert Lead.objects.allocated().count() == 13  # 40 units, 3 per lead
    assert Provider.objects.filter(remaining_quota=0).count() == 39
    assert_invariants()


@pytest.mark.django_db(transaction=True)
def test_drains_racing_with_intake_keep_order_and_invariants(seeded_tx):
    # Everyone exhausted: the first leads all wait.
    Provider.objects.update(quota=0, remaining_quota=0)
    errors = storm(lead_jobs(30, [1, 2, 3]), threads=4)
    assert errors == []
    assert Lead.objects.waiting().count() == 30
    Provider.objects.update(quota=5, remaining_quota=5)  # capacity back, as a plan change would

    jobs = [allocate_waiting_leads for _ in range(4)] + lead_jobs(30, [1, 2, 3], first=100)
    errors = storm(jobs[::-1], threads=8)

    assert errors == []
    assert_invariants()
    # Waiting leads keep their place: within a service, allocated leads precede waiting ones.
    by_service = defaultdict(list)
    for service_id, status in Lead.objects.order_by("pk").values_list("service_id", "status"):
        by_service[service_id].append(status)
    for statuses in by_service.values():
        if "waiting" in statuses:
            first_waiting = statuses.index("waiting")
            assert "allocated" not in statuses[first_waiting:]
