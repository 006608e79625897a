import factory
from factory.django import DjangoModelFactory

from credentials.models import ApiKey


class ApiKeyFactory(DjangoModelFactory):
    name = factory.Sequence(lambda n: f"source-{n}")
    raw_key = factory.LazyFunction(ApiKey.generate)
    key_hash = factory.LazyAttribute(lambda o: ApiKey.hash_key(o.raw_key))
    key_prefix = factory.LazyAttribute(lambda o: o.raw_key[:10])

    class Meta:
        model = ApiKey
        exclude = ("raw_key",)
