"""PostgreSQL itself rejects leads and allocations that break SPEC §2-§3, whatever wrote them."""

import pytest
from django.db import IntegrityError, transaction

from allocation.models import Allocation, Lead
from allocation.tests.factories import LeadFactory
from providers.models import Membership
from providers.tests.factories import ProviderFactory, ServiceFactory


def violated(excinfo):
    return excinfo.value.__cause__.diag.constraint_name


def allocate(lead, providers):
    Allocation.objects.bulk_create(
        Allocation(lead=lead, provider=p, role=Membership.Role.POOL, rank=rank, cycle=1)
        for rank, p in enumerate(providers, start=1)
    )


def write_lead(service, providers):
    """A lead and its allocations written by hand, bypassing the engine, in one transaction."""
    with transaction.atomic():
        lead = LeadFactory(service=service, status=Lead.Status.ALLOCATED)
        allocate(lead, providers)
    return lead


def allocated_lead(providers):
    return write_lead(ServiceFactory(), providers)


@pytest.mark.django_db
def test_second_lead_with_the_same_phone_for_a_service_is_rejected():
    lead = LeadFactory()

    with pytest.raises(IntegrityError) as excinfo, transaction.atomic():
        LeadFactory(service=lead.service, phone=lead.phone)

    assert violated(excinfo) == "allocation_lead_unique_phone_per_service"


@pytest.mark.django_db
def test_same_phone_may_request_another_service():
    lead = LeadFactory()

    LeadFactory(service=ServiceFactory(), phone=lead.phone)

    assert Lead.objects.filter(phone=lead.phone).count() == 2


@pytest.mark.django_db(transaction=True)
def test_same_provider_twice_for_a_lead_is_rejected():
    first, second, third = ProviderFactory.create_batch(3)
    lead = allocated_lead([first, second, third])

    with pytest.raises(IntegrityError) as excinfo, transaction.atomic():
        Allocation.objects.filter(lead=lead, rank=3).update(provider=first)

    assert violated(excinfo) == "allocation_allocation_unique_provider"
    assert set(lead.allocations.values_list("provider_id", flat=True)) == {
        first.pk,
        second.pk,
        third.pk,
    }


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("rank", [0, 4])
def test_rank_outside_1_to_3_is_rejected(rank):
    lead = allocated_lead(ProviderFactory.create_batch(3))

    with pytest.raises(IntegrityError) as excinfo, transaction.atomic():
        Allocation.objects.filter(lead=lead, rank=3).update(rank=rank)

    assert violated(excinfo) == "allocation_allocation_rank_1_to_3"
    assert sorted(lead.allocations.values_list("rank", flat=True)) == [1, 2, 3]


@pytest.mark.django_db(transaction=True)
def test_allocated_lead_with_three_allocations_commits():
    providers = ProviderFactory.create_batch(3)

    lead = allocated_lead(providers)

    assert Allocation.objects.filter(lead=lead).count() == 3


@pytest.mark.django_db(transaction=True)
def test_allocated_lead_with_fewer_than_three_allocations_fails_at_commit():
    providers = ProviderFactory.create_batch(2)
    service = ServiceFactory()

    with pytest.raises(IntegrityError) as excinfo:
        write_lead(service, providers)

    assert violated(excinfo) == "allocation_lead_three_providers"
    assert not Lead.objects.filter(service=service).exists()
    assert not Allocation.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_marking_a_waiting_lead_allocated_without_allocations_fails_at_commit():
    lead = LeadFactory()

    with pytest.raises(IntegrityError), transaction.atomic():
        Lead.objects.filter(pk=lead.pk).update(status=Lead.Status.ALLOCATED)

    lead.refresh_from_db()
    assert lead.status == Lead.Status.WAITING


@pytest.mark.django_db(transaction=True)
def test_waiting_lead_with_an_allocation_fails_at_commit():
    lead = LeadFactory()

    with pytest.raises(IntegrityError) as excinfo, transaction.atomic():
        allocate(lead, [ProviderFactory()])

    assert violated(excinfo) == "allocation_lead_three_providers"
    assert not Allocation.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_removing_an_allocation_from_an_allocated_lead_fails_at_commit():
    lead = allocated_lead(ProviderFactory.create_batch(3))

    with pytest.raises(IntegrityError), transaction.atomic():
        Allocation.objects.filter(lead=lead, rank=3).delete()

    assert Allocation.objects.filter(lead=lead).count() == 3
