"""Intake rate limits (SPEC §3's third check): fixed windows counted in Django's cache.

The cache is Redis when REDIS_URL is set, so every process and host counts in the same
window; without it each process counts alone (locmem). ``cache.add`` creates a window's
counter and ``cache.incr`` bumps it atomically, so concurrent requests never lose a count.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse

from allocation.models import ApiKey
from leaddist.errors import error_response

logger = logging.getLogger(__name__)

UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


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
    """ "120/m" -> Rate(120, 60); "0" -> None (no limit). Settings validate the format."""
    if value == "0":
        return None
    count, _, unit = value.partition("/")
    return Rate(int(count), UNIT_SECONDS[unit])


def hit(identity: str, rate: Rate | None, *, now: float | None = None) -> None:
    """Count one request for ``identity``; raise RateLimited once it is past ``rate``."""
    if rate is None:
        return
    now = time.time() if now is None else now
    window = int(now // rate.seconds)
    key = f"ratelimit:{identity}:{rate.seconds}:{window}"
    try:
        # The counter outlives its window by a second, so incr() right after add() finds it.
        cache.add(key, 0, timeout=rate.seconds + 1)
        try:
            count = cache.incr(key)
        except ValueError:  # evicted between add() and incr(): count this request alone
            cache.add(key, 1, timeout=rate.seconds + 1)
            count = 1
    except Exception:
        # Fail open: an unreachable cache must not stop lead intake, only its limits.
        logger.warning("rate limit not applied: the cache is unavailable", exc_info=True)
        return
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


def check_intake_rate(request: HttpRequest, principal: object | None) -> None:
    """Raise RateLimited if this lead submission is over its limit.

    An API key counts against RATE_LIMIT_PER_KEY; a request without credential (the public
    form) against RATE_LIMIT_PER_IP for its client address. Staff sessions are not limited:
    they are operators, and the test tools submit bursts of leads on their behalf.
    """
    if isinstance(principal, ApiKey):
        hit(f"key:{principal.pk}", parse_rate(settings.RATE_LIMIT_PER_KEY))
    elif principal is None:
        hit(f"ip:{client_ip(request)}", parse_rate(settings.RATE_LIMIT_PER_IP))
