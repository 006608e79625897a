import factory
from factory.django import DjangoModelFactory

from allocation.models import Lead
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
