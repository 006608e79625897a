"""Reads of the catalogue shared by several callers."""

from __future__ import annotations

import threading
import time

from django.conf import settings

from providers.models import Service

MAX_ID = 2**63 - 1  # PostgreSQL bigint: a larger id cannot exist


class _ActiveServices:
    """Active services by id or slug, remembered for SERVICE_CACHE_SECONDS in each process.

    Lead intake names a service on every request; this saves it a query. Only hits are kept:
    a service that is unknown or inactive is looked up again every time, so a new or
    reactivated service is found at once. What a hit may get wrong for a few seconds is a
    service deactivated meanwhile, which the engine checks again under its lock, and a new
    name or slug in the answer.
    """

    def __init__(self) -> None:
        self._found: dict[str, tuple[float, Service]] = {}
        self._lock = threading.Lock()

    def get(self, *, pk: int | None = None, slug: str | None = None) -> Service | None:
        key = f"id:{pk}" if pk is not None else f"slug:{slug}"
        now = time.monotonic()
        hit = self._found.get(key)
        if hit is not None and now - hit[0] < settings.SERVICE_CACHE_SECONDS:
            return hit[1]
        if pk is not None and not 0 < pk <= MAX_ID:
            return None
        lookup = {"pk": pk} if pk is not None else {"slug": slug}
        service = Service.objects.active().filter(**lookup).first()
        with self._lock:
            if service is None:
                self._found.pop(key, None)
            else:
                if len(self._found) > 10_000:
                    self._found.clear()
                self._found[key] = (now, service)
        return service

    def clear(self) -> None:
        with self._lock:
            self._found.clear()


active_services = _ActiveServices()
