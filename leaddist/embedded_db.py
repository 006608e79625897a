"""Start the embedded PostgreSQL (pgserver) that serves a checkout with no DATABASE_URL.

The server keeps its data under ``.pgdata/`` in the checkout and listens only on a Unix
socket. pgserver counts the processes using it and stops the server when the last one exits,
so nothing is left running after ``make test``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

EMBEDDED_DB_NAME = "leaddist"


def embedded_database_config(data_dir: Path) -> dict[str, object]:
    """Start (or reuse) the embedded server and return a Django DATABASES entry for it."""
    # platformdirs warns when XDG_RUNTIME_DIR is unset, which is normal in containers and CI.
    warnings.filterwarnings("ignore", module="platformdirs")
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    import pgserver
    import psycopg

    server = pgserver.get_server(data_dir, cleanup_mode="stop")
    info = server.get_postmaster_info()
    socket_dir = str(info.socket_dir)
    port = info.port
    with psycopg.connect(
        dbname="postgres", user="postgres", host=socket_dir, port=port, autocommit=True
    ) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [EMBEDDED_DB_NAME]
        ).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{EMBEDDED_DB_NAME}"')
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": EMBEDDED_DB_NAME,
        "USER": "postgres",
        "HOST": socket_dir,
        "PORT": str(port),
    }
