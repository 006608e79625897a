"""`python manage.py seed` creates SPEC §1's catalogue, once, and never restores quota."""

from io import StringIO

import pytest
from django.core.management import call_command

from providers.models import Membership, PoolCursor, Provider, Service
from providers.services import seed_catalogue, update_provider

pytestmark = pytest.mark.django_db

# SPEC §1, written out: (service id, role, position, provider id)
EXPECTED_MEMBERSHIPS = [
    (1, "mandatory", 1, 1),
    (1, "pool", 1, 2),
    (1, "pool", 2, 3),
    (1, "pool", 3, 4),
    (2, "mandatory", 1, 5),
    (2, "pool", 1, 6),
    (2, "pool", 2, 7),
    (2, "pool", 3, 8),
    (3, "mandatory", 1, 1),
    (3, "mandatory", 2, 4),
    (3, "pool", 1, 2),
    (3, "pool", 2, 3),
    (3, "pool", 3, 5),
    (3, "pool", 4, 6),
    (3, "pool", 5, 7),
    (3, "pool", 6, 8),
]


def catalogue():
    return {
        "services": list(
            Service.objects.order_by("pk").values_list("pk", "name", "slug", "active")
        ),
        "providers": list(
            Provider.objects.order_by("pk").values_list(
                "pk", "name", "quota", "remaining_quota", "status", "cycle"
            )
        ),
        "memberships": sorted(
            Membership.objects.values_list("service_id", "role", "position", "provider_id")
        ),
        "cursors": list(
            PoolCursor.objects.order_by("service_id").values_list("service_id", "position")
        ),
    }


def test_seed_creates_exactly_the_spec_catalogue():
    call_command("seed", stdout=StringIO())

    assert catalogue() == {
        "services": [(n, f"Service {n}", f"service-{n}", True) for n in (1, 2, 3)],
        "providers": [(n, f"Provider {n}", 10, 10, "active", 1) for n in range(1, 9)],
        "memberships": EXPECTED_MEMBERSHIPS,
        "cursors": [(1, None), (2, None), (3, None)],
    }


def test_seeding_twice_changes_nothing():
    call_command("seed", stdout=StringIO())
    before = catalogue()
    out = StringIO()

    call_command("seed", stdout=out)

    assert catalogue() == before
    assert "created 0 services, 0 providers, 0 memberships" in out.getvalue()


def test_seeding_again_never_restores_an_exhausted_providers_quota():
    seed_catalogue()
    Provider.objects.filter(pk=2).update(remaining_quota=0, leads_this_cycle=10)
    Provider.objects.filter(pk=3).update(remaining_quota=4)

    call_command("seed", stdout=StringIO())

    assert Provider.objects.get(pk=2).remaining_quota == 0
    assert Provider.objects.get(pk=3).remaining_quota == 4


def test_seeding_again_keeps_an_operators_quota_status_and_name():
    seed_catalogue()
    update_provider(Provider.objects.get(pk=1), name="Acme", quota=20, status="paused")

    seed_catalogue()

    assert Provider.objects.filter(pk=1).values_list("name", "quota", "status").get() == (
        "Acme",
        20,
        "paused",
    )


def test_seed_fills_in_what_is_missing():
    seed_catalogue()
    Membership.objects.filter(service_id=3, provider_id=8).delete()

    created = seed_catalogue()

    assert created == {"services": 0, "providers": 0, "memberships": 1}
    assert (
        sorted(Membership.objects.values_list("service_id", "role", "position", "provider_id"))
        == EXPECTED_MEMBERSHIPS
    )


def test_objects_created_after_the_seed_get_fresh_ids():
    seed_catalogue()

    service = Service.objects.create(slug="extra", name="Extra")
    provider = Provider.objects.create(name="Extra")

    assert service.pk == 4
    assert provider.pk == 9
