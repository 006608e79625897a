"""PostgreSQL itself rejects catalogue rows that break SPEC §1, whatever wrote them."""

import pytest
from django.db import IntegrityError, transaction

from providers.models import Membership, PoolCursor, Provider
from providers.tests.factories import MembershipFactory, ProviderFactory, ServiceFactory

pytestmark = pytest.mark.django_db


def violated(excinfo):
    return excinfo.value.__cause__.diag.constraint_name


def eligibility(provider):
    return set(
        Membership.objects.filter(provider=provider).values_list("provider_eligible", flat=True)
    )


def test_negative_remaining_quota_is_rejected():
    provider = ProviderFactory()

    with pytest.raises(IntegrityError) as excinfo, transaction.atomic():
        Provider.objects.filter(pk=provider.pk).update(remaining_quota=-1)

    assert violated(excinfo) in {
        "providers_provider_remaining_quota_in_range",
        "providers_provider_remaining_quota_check",
    }
    provider.refresh_from_db()
    assert provider.remaining_quota == 10


def test_remaining_quota_above_quota_is_rejected():
    provider = ProviderFactory(quota=10)

    with pytest.raises(IntegrityError) as excinfo, transaction.atomic():
        Provider.objects.filter(pk=provider.pk).update(remaining_quota=11)

    assert violated(excinfo) == "providers_provider_remaining_quota_in_range"


def test_lowering_quota_below_remaining_quota_is_rejected():
    provider = ProviderFactory(quota=10)

    with pytest.raises(IntegrityError) as excinfo, transaction.atomic():
        Provider.objects.filter(pk=provider.pk).update(quota=5)

    assert violated(excinfo) == "providers_provider_remaining_quota_in_range"


def test_provider_twice_in_a_service_is_rejected():
    membership = MembershipFactory(role=Membership.Role.POOL, position=1)

    with pytest.raises(IntegrityError) as excinfo, transaction.atomic():
        Membership.objects.create(
            service=membership.service,
            provider=membership.provider,
            role=Membership.Role.MANDATORY,
            position=1,
        )

    assert violated(excinfo) == "providers_membership_unique_provider"


def test_same_position_twice_in_a_role_is_rejected():
    membership = MembershipFactory(role=Membership.Role.POOL, position=3)

    with pytest.raises(IntegrityError) as excinfo, transaction.atomic():
        MembershipFactory(service=membership.service, role=Membership.Role.POOL, position=3)

    assert violated(excinfo) == "providers_membership_unique_position"


def test_same_position_in_different_roles_is_allowed():
    membership = MembershipFactory(role=Membership.Role.POOL, position=1)

    MembershipFactory(service=membership.service, role=Membership.Role.MANDATORY, position=1)

    assert Membership.objects.filter(service=membership.service).count() == 2


def test_fourth_mandatory_provider_is_rejected():
    service = ServiceFactory()
    for position in (1, 2, 3):
        MembershipFactory(service=service, mandatory=True, position=position)

    with pytest.raises(IntegrityError) as excinfo, transaction.atomic():
        MembershipFactory(service=service, mandatory=True, position=4)

    assert violated(excinfo) == "providers_membership_mandatory_position_1_to_3"
    assert Membership.objects.filter(service=service).mandatory().count() == 3


def test_mandatory_position_zero_is_rejected():
    service = ServiceFactory()

    with pytest.raises(IntegrityError) as excinfo, transaction.atomic():
        MembershipFactory(service=service, mandatory=True, position=0)

    assert violated(excinfo) == "providers_membership_mandatory_position_1_to_3"


def test_second_cursor_for_a_service_is_rejected():
    service = ServiceFactory()

    with pytest.raises(IntegrityError), transaction.atomic():
        PoolCursor.objects.create(service=service)

    assert PoolCursor.objects.filter(service=service).count() == 1


def test_pausing_a_provider_marks_all_its_memberships_ineligible():
    provider = ProviderFactory()
    MembershipFactory(provider=provider)
    MembershipFactory(provider=provider, mandatory=True, position=1)

    Provider.objects.filter(pk=provider.pk).update(status=Provider.Status.PAUSED)

    assert eligibility(provider) == {False}


def test_resuming_a_provider_marks_its_memberships_eligible_again():
    provider = ProviderFactory(paused=True)
    MembershipFactory(provider=provider)
    MembershipFactory(provider=provider)

    Provider.objects.filter(pk=provider.pk).update(status=Provider.Status.ACTIVE)

    assert eligibility(provider) == {True}


def test_draining_a_providers_quota_marks_its_memberships_ineligible():
    provider = ProviderFactory(quota=1)
    MembershipFactory(provider=provider)
    MembershipFactory(provider=provider)

    Provider.objects.filter(pk=provider.pk).update(remaining_quota=0)

    assert eligibility(provider) == {False}


def test_quota_coming_back_marks_memberships_eligible_again():
    provider = ProviderFactory(exhausted=True)
    MembershipFactory(provider=provider)

    Provider.objects.filter(pk=provider.pk).update(remaining_quota=10)

    assert eligibility(provider) == {True}


def test_membership_of_an_exhausted_provider_is_inserted_ineligible():
    provider = ProviderFactory(exhausted=True)

    membership = MembershipFactory(provider=provider)

    membership.refresh_from_db()
    assert membership.provider_eligible is False


def test_membership_of_a_paused_provider_is_inserted_ineligible():
    provider = ProviderFactory(paused=True)

    membership = MembershipFactory(provider=provider)

    membership.refresh_from_db()
    assert membership.provider_eligible is False


def test_other_providers_memberships_are_left_alone():
    paused, other = ProviderFactory(), ProviderFactory()
    service = ServiceFactory()
    MembershipFactory(service=service, provider=paused, position=1)
    MembershipFactory(service=service, provider=other, position=2)

    Provider.objects.filter(pk=paused.pk).update(status=Provider.Status.PAUSED)

    assert eligibility(paused) == {False}
    assert eligibility(other) == {True}
