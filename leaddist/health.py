"""Is this process's backing store reachable? Asked by /healthz and by /metrics at scrape time."""

from __future__ import annotations

from django.db import connection

from leaddist.http import redis_client


def database_ok() -> bool:
    """Does PostgreSQL answer a ``SELECT 1`` on this thread's connection?"""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        return False
    return True


def redis_health() -> str:
    """ "ok", "degraded" or "disabled" (no REDIS_URL): see leaddist.http.redis_client.health."""
    return redis_client.health()
