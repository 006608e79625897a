"""Intake rate limits (SPEC §3's third check): fixed windows, counted in Redis or in-process.

With REDIS_URL every process and host counts in the same window: one round trip per request
(``SET NX`` with the window's expiry, then ``INCR``, pipelined), so concurrent requests never
lose a count. Without Redis, or while it is unreachable (the breaker in redis_client is open),
each process counts alone: the limit still holds per process instead of vanishing, and intake
never waits on Redis.

Who is limited and how much is the caller's business (allocation.api, allocation.views): this
module only counts.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from leaddist import redis_client
from leaddist.errors import error_response

logger = logging.getLogger(__name__)

UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}
RATE_PATTERN = r"0|[1-9][0-9]*/[smh]"


@dataclass(frozen=True)
class Rate:
    count: int
    seconds: int


class RateLimited(Exception):
    """Over the limit: answer 429 with Retry-After, the seconds until the window ends."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Too many requests; retry after {retry_after} s.")
        self.retry_after = retry_after

    def response(self) -> HttpResponse:
        response = error_response(429, "rate_limited", str(self))
        response["Retry-After"] = str(self.retry_after)
        return response


def parse_rate(value: str) -> Rate | None:
    """ "120/m" -> Rate(120, 60); "0" -> None (no limit). Callers validate the format."""
    if value == "0":
        return None
    count, _, unit = value.partition("/")
    return Rate(int(count), UNIT_SECONDS[unit])


class _LocalCounters:
    """This process's windows, for when there is no Redis to share them."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()

    def incr(self, key: str, *, ttl: int, now: float) -> int:
        with self._lock:
            if len(self._counts) > 10_000:
                for stale in [k for k, until in self._expiry.items() if until <= now]:
                    del self._counts[stale], self._expiry[stale]
            self._expiry.setdefault(key, now + ttl)
            self._counts[key] = self._counts.get(key, 0) + 1
            return self._counts[key]

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()
            self._expiry.clear()


local_counters = _LocalCounters()


def _count(key: str, *, ttl: int, now: float) -> int:
    client = redis_client.sync_client()
    if client is not None and redis_client.breaker.allow():
        try:
            pipe = client.pipeline(transaction=False)
            pipe.set(key, 0, ex=ttl, nx=True)
            pipe.incr(key)
            count = pipe.execute()[1]
        except Exception as exc:
            redis_client.breaker.failed(exc)
        else:
            redis_client.breaker.succeeded()
            return int(count)
    return local_counters.incr(key, ttl=ttl, now=now)


def hit(identity: str, rate: Rate | None, *, now: float | None = None) -> None:
    """Count one request for ``identity``; raise RateLimited once it is past ``rate``."""
    if rate is None:
        return
    now = time.time() if now is None else now
    window = int(now // rate.seconds)
    # The counter outlives its window by a second, so a late increment still finds it.
    count = _count(f"ratelimit:{identity}:{rate.seconds}:{window}", ttl=rate.seconds + 1, now=now)
    if count > rate.count:
        raise RateLimited(max(1, math.ceil((window + 1) * rate.seconds - now)))


def client_ip(request: HttpRequest) -> str:
    """REMOTE_ADDR, or with TRUSTED_PROXY_COUNT = N the Nth X-Forwarded-For hop from the right.

    Each proxy appends the address it received the request from, so the Nth entry from the
    right is the client as the outermost trusted proxy saw it; entries further left are
    whatever the client sent and cannot be trusted.
    """
    proxies = settings.TRUSTED_PROXY_COUNT
    if proxies > 0:
        hops = [
            hop.strip()
            for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
            if hop.strip()
        ]
        if len(hops) >= proxies:
            return hops[-proxies]
    return request.META.get("REMOTE_ADDR") or "unknown"
