"""Shared fixtures. Tests run on real PostgreSQL: the embedded one, or DATABASE_URL."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from providers.models import PoolCursor, Provider, Service
from providers.services import seed_catalogue


@pytest.fixture(autouse=True)
def fresh_cache(settings):
    """Each test gets an empty in-process cache: rate-limit windows never carry over, and a
    REDIS_URL in the environment is never flushed."""
    from django.core.cache import cache

    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "leaddist-tests",
        }
    }
    cache.clear()


@dataclass
class Seeded:
    """Handles on SPEC §1's seed catalogue."""

    def service(self, pk: int) -> Service:
        return Service.objects.get(pk=pk)

    def provider(self, pk: int) -> Provider:
        return Provider.objects.get(pk=pk)

    def providers(self, *pks: int):
        return Provider.objects.filter(pk__in=pks)

    def cursor(self, service_id: int) -> int | None:
        return PoolCursor.objects.get(service_id=service_id).position


@pytest.fixture
def seeded(db) -> Seeded:
    seed_catalogue()
    return Seeded()


@pytest.fixture
def seeded_tx(transactional_db) -> Seeded:
    """The seed catalogue, committed, for tests with real threads."""
    seed_catalogue()
    return Seeded()
