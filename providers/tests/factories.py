import factory
from factory.django import DjangoModelFactory

from providers.models import Membership, PoolCursor, Provider, Service


class ServiceFactory(DjangoModelFactory):
    class Meta:
        model = Service
        skip_postgeneration_save = True

    slug = factory.Sequence(lambda n: f"svc-{n}")
    name = factory.Sequence(lambda n: f"Svc {n}")
    cursor = factory.RelatedFactory("providers.tests.factories.PoolCursorFactory", "service")


class PoolCursorFactory(DjangoModelFactory):
    class Meta:
        model = PoolCursor
        django_get_or_create = ("service",)

    service = factory.SubFactory(ServiceFactory, cursor=None)


class ProviderFactory(DjangoModelFactory):
    class Meta:
        model = Provider

    class Params:
        exhausted = factory.Trait(remaining_quota=0)
        paused = factory.Trait(status=Provider.Status.PAUSED)

    name = factory.Sequence(lambda n: f"Prov {n}")
    quota = 10
    remaining_quota = factory.LazyAttribute(lambda o: o.quota)


class MembershipFactory(DjangoModelFactory):
    class Meta:
        model = Membership

    class Params:
        mandatory = factory.Trait(role=Membership.Role.MANDATORY)

    service = factory.SubFactory(ServiceFactory)
    provider = factory.SubFactory(ProviderFactory)
    role = Membership.Role.POOL
    position = factory.Sequence(lambda n: n + 1)
