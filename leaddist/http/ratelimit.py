"""Intake rate limits (SPEC §3's third check): fixed windows, counted per process and shared
through Redis in batches (Counters).

With REDIS_URL every process and host adds its counts to the same window in Redis (``SET NX``
with the window's expiry, then ``INCRBY``, pipelined), so no count is ever lost. Without Redis,
or while it is unreachable (the breaker in redis_client is open), each process counts alone:
the limit still holds per process instead of vanishing, and intake never waits on Redis.

Who is limited and how much is the caller's business (intake.api, intake.views): this
module only counts.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

import redis
from django.conf import settings
from django.http import HttpRequest, HttpResponse

from leaddist.http import redis_client
from leaddist.http.errors import error_response

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


@dataclass
class _Window:
    """One identity's count in one window, as this process knows it."""

    expires: float
    shared: int = 0  # the count in Redis after our last exchange with it (everyone's)
    pending: int = 0  # our requests not yet added to Redis
    synced_at: float = 0.0


class Counters:
    """This process's windows; with Redis, shared with every process in batches.

    A request is counted here at once and decided on ``shared + pending``. The pending counts
    go to Redis (one INCRBY, which also brings back everyone's total) at most every
    SYNC_SECONDS per window, or sooner once they reach a tenth of the limit. So a burst costs
    a Redis round trip every few dozen requests rather than one each, and all processes
    together can pass the limit by at most what they counted since their last exchange: a
    tenth of the limit each, or SYNC_SECONDS of their traffic. Without Redis, or while it is
    unreachable, each process counts alone and exactly.
    """

    SYNC_SECONDS = 0.1

    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def count(self, key: str, *, limit: int, ttl: int, now: float) -> int:
        """Count one request; return the window's count with it."""
        client = redis_client.sync_client()
        with self._lock:
            if len(self._windows) > 10_000:
                for stale in [k for k, w in self._windows.items() if w.expires <= now]:
                    del self._windows[stale]
            window = self._windows.setdefault(key, _Window(expires=now + ttl))
            window.pending += 1
            estimate = window.shared + window.pending
            due = now - window.synced_at >= self.SYNC_SECONDS or window.pending * 10 >= limit
            if client is None or not due or estimate > limit:
                return estimate
            flushing, window.pending, window.synced_at = window.pending, 0, now
        shared = self._exchange(client, key, flushing, ttl)
        with self._lock:
            if shared is None:
                window.pending += flushing  # Redis is away: keep counting here
            else:
                window.shared = max(window.shared, shared)
            return window.shared + window.pending

    @staticmethod
    def _exchange(client: redis.Redis, key: str, amount: int, ttl: int) -> int | None:
        if not redis_client.breaker.allow():
            return None
        try:
            pipe = client.pipeline(transaction=False)
            pipe.set(key, 0, ex=ttl, nx=True)
            pipe.incrby(key, amount)
            shared = pipe.execute()[1]
        except Exception as exc:
            redis_client.breaker.failed(exc)
            return None
        redis_client.breaker.succeeded()
        return int(shared)

    def current(self, key: str, *, now: float) -> int:
        """The window's count as this process knows it, with Redis's when it answers; counts
        nothing."""
        with self._lock:
            window = self._windows.get(key)
            local = 0 if window is None or window.expires <= now else window.shared + window.pending
        client = redis_client.sync_client()
        if client is None or not redis_client.breaker.allow():
            return local
        try:
            shared = client.get(key)
        except Exception as exc:
            redis_client.breaker.failed(exc)
            return local
        redis_client.breaker.succeeded()
        pending = 0 if window is None else window.pending
        return max(local, int(shared or 0) + pending)

    def clear(self) -> None:
        with self._lock:
            self._windows.clear()


counters = Counters()


def hit(identity: str, rate: Rate | None, *, now: float | None = None) -> None:
    """Count one request for ``identity``; raise RateLimited once it is past ``rate``."""
    if rate is None:
        return
    now = time.time() if now is None else now
    window = int(now // rate.seconds)
    # The counter outlives its window by a second, so a late increment still finds it.
    count = counters.count(
        f"ratelimit:{identity}:{rate.seconds}:{window}",
        limit=rate.count,
        ttl=rate.seconds + 1,
        now=now,
    )
    if count > rate.count:
        raise RateLimited(max(1, math.ceil((window + 1) * rate.seconds - now)))


def exceeded(identity: str, rate: Rate | None, *, now: float | None = None) -> RateLimited | None:
    """What ``hit`` would raise if ``identity`` were already past ``rate``, without counting a
    request: for limits on failures, checked before the attempt and counted only after one."""
    if rate is None:
        return None
    now = time.time() if now is None else now
    window = int(now // rate.seconds)
    count = counters.current(f"ratelimit:{identity}:{rate.seconds}:{window}", now=now)
    if count >= rate.count:
        return RateLimited(max(1, math.ceil((window + 1) * rate.seconds - now)))
    return None


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
