"""Settings of bench_pool_check's `roundtrip` mode: Django's own PostgreSQL engine, with
psycopg_pool's check on every checkout (Django's CONN_HEALTH_CHECKS), to compare with
leaddist's check (leaddist.http.postgresql)."""

from leaddist.settings import *  # noqa: F403
from leaddist.settings import DATABASES

DATABASES["default"]["ENGINE"] = "django.db.backends.postgresql"
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
