"""Is this process's backing store reachable? Asked by /healthz and by /metrics at scrape time.

Each answers for a fresh connection: a pooled one that died while it waited (PostgreSQL
restarted, ``pg_terminate_backend``, a proxy's idle timeout) is a reason to reconnect, not to
report the store as down.
"""

from __future__ import annotations

from django.db import DatabaseError, connection

from leaddist.http import redis_client
from leaddist.http.db import connection_lost, recover


def _select_one() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def database_ok() -> bool:
    """Does PostgreSQL answer a ``SELECT 1``? A lost connection is replaced once and asked
    again (leaddist.http.db.recover), so only a database that refuses a fresh one is down."""
    try:
        _select_one()
    except Exception as exc:
        if not (isinstance(exc, DatabaseError) and connection_lost(exc)):
            return False
    else:
        return True
    try:
        recover()
        _select_one()
    except Exception:
        return False
    return True


def redis_health() -> str:
    """ "ok", "unavailable" or "disabled" (no REDIS_URL): see leaddist.http.redis_client.health."""
    return redis_client.health()
