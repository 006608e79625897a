import factory
from factory.django import DjangoModelFactory

from allocation.models import ApiKey, Lead
from providers.tests.factories import ServiceFactory


class LeadFactory(DjangoModelFactory):
    """A waiting lead with no allocations: the only state valid without the engine."""

    class Meta:
        model = Lead

    service = factory.SubFactory(ServiceFactory)
    name = factory.Faker("name")
    phone = factory.Sequence(lambda n: f"+1555{n:07d}")
    city = "Springfield"
    status = Lead.Status.WAITING


class ApiKeyFactory(DjangoModelFactory):
    name = factory.Sequence(lambda n: f"source-{n}")
    raw_key = factory.LazyFunction(ApiKey.generate)
    key_hash = factory.LazyAttribute(lambda o: ApiKey.hash_key(o.raw_key))
    key_prefix = factory.LazyAttribute(lambda o: o.raw_key[:10])

    class Meta:
        model = ApiKey
        exclude = ("raw_key",)
