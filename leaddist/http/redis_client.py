"""The one way leaddist talks to Redis: short timeouts, no waiting retries, and a circuit
breaker.

Redis carries optional work only (shared rate-limit counters, wake-ups between processes for
the live dashboard), so an unreachable Redis must cost a request nothing noticeable. redis-py's
defaults would do the opposite: a 5-second socket timeout and three retries with backoff on
every call. Here a call fails within REDIS_TIMEOUT_SECONDS, and after a failure the breaker
stays open for REDIS_BREAKER_SECONDS, during which callers skip Redis at once. The first call
after that is the probe: success closes the breaker, failure opens it again.

The one retry: a connection error (never a timeout) is retried once, at once, on a fresh
connection. After Redis restarts, every pooled connection is dead, and without it the first
call on each would fail and open the breaker again. With Redis down the retry's connect is
refused at once, so it costs nothing noticeable.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
import redis.asyncio
from django.conf import settings
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

logger = logging.getLogger(__name__)


class CircuitBreaker:
    """Open after a failure for ``seconds``; thread-safe, and cheap while closed."""

    def __init__(self, name: str, *, seconds: float) -> None:
        self.name = name
        self.seconds = seconds
        self._open_until = 0.0
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return time.monotonic() < self._open_until

    def allow(self) -> bool:
        """May a call go out now? While open, no; afterwards one caller probes at a time."""
        if not self._open_until:
            return True
        with self._lock:
            now = time.monotonic()
            if now < self._open_until:
                return False
            # Half-open: this caller probes, the others keep skipping until it reports.
            self._open_until = now + self.seconds
            return True

    def succeeded(self) -> None:
        if self._open_until:
            with self._lock:
                if self._open_until:
                    logger.warning("%s is reachable again", self.name)
                self._open_until = 0.0

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            if not self._open_until or time.monotonic() >= self._open_until:
                logger.warning(
                    "%s unavailable (%s); skipping it for %.0f s", self.name, exc, self.seconds
                )
            self._open_until = time.monotonic() + self.seconds


breaker = CircuitBreaker("Redis", seconds=settings.REDIS_BREAKER_SECONDS)


def client_options(*, asyncio: bool = False) -> dict[str, Any]:
    timeout = settings.REDIS_TIMEOUT_SECONDS
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": (AsyncRetry if asyncio else Retry)(
            NoBackoff(), 1, supported_errors=(redis.ConnectionError,)
        ),
    }


_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def sync_client() -> redis.Redis | None:
    """The process's Redis client (thread-safe, pooled), or None without REDIS_URL."""
    url = settings.REDIS_URL
    if not url:
        return None
    client = _clients.get(url)
    if client is None:
        with _clients_lock:
            client = _clients.setdefault(url, redis.Redis.from_url(url, **client_options()))
    return client


def async_client(*, subscriber: bool = False) -> redis.asyncio.Redis | None:
    """A new asyncio Redis client for the running event loop, or None without REDIS_URL.

    A ``subscriber`` waits for messages without a read timeout; keepalive probes and health
    checks find a dead connection instead.
    """
    if not settings.REDIS_URL:
        return None
    options = client_options(asyncio=True)
    if subscriber:
        options |= {"socket_timeout": None, "socket_keepalive": True, "health_check_interval": 15}
    return redis.asyncio.Redis.from_url(settings.REDIS_URL, **options)


def health() -> str:
    """ "ok", "unavailable" or "disabled" (no REDIS_URL), for health checks: a PING within the
    short timeout (a dead pooled connection is replaced once, as on every call).

    It asks even while the breaker is open, so that it reports Redis as it is now, not as it
    was at the last failure; its answer opens or closes the breaker like any other call's.
    While Redis is away a check costs a refused connection, or REDIS_TIMEOUT_SECONDS at most.
    """
    client = sync_client()
    if client is None:
        return "disabled"
    try:
        client.ping()
    except Exception as exc:
        breaker.failed(exc)
        return "unavailable"
    breaker.succeeded()
    return "ok"
