"""Django's PostgreSQL backend, whose pool lends only connections that are still alive.

Selected by the settings when DB_POOL_CHECK is on (the default). A connection that died while
it waited in the pool (PostgreSQL restarted, ``pg_terminate_backend``, a proxy's timeout) is
given back to be discarded, and the next one is taken, until one is alive: the request or job
never sees the dead ones. The test costs no round trip (leaddist.http.db.usable).

psycopg_pool's own ``check`` (Django's CONN_HEALTH_CHECKS) is not used: it costs a round trip
per checkout, and after each dead connection it finds it sleeps (1 s, then 2 s, 4 s...), so a
pool of dead connections makes the first request after a kill wait seconds, or time out.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.postgresql import base

from leaddist.http.db import usable


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        connection = super().get_new_connection(conn_params)
        pool = self.pool
        if pool is None:
            return connection
        # Each connection found dead is replaced by the pool in the background; past max_size
        # of them, the one we hold is as new as the pool can give.
        for _ in range(pool.max_size):
            if usable(connection):
                break
            pool.putconn(connection)
            connection = super().get_new_connection(conn_params)
        return connection
