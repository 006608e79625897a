"""GET /metrics: Prometheus' view of leaddist, for operators (docs/OPERATIONS.md, Metrics).

Two kinds of metric come out:

- what the processes counted as they worked (leaddist.http.metrics): added up over every web and
  background worker under leaddist.serve (multiprocess mode), this process's alone otherwise;
- what is read now, at scrape time, by :class:`ScrapeTimeCollector`: database and Redis health
  (the checks /healthz makes), the waiting queue of every service, and the background queue.
  Three small queries per scrape, none per lead.

Who may scrape: ``Authorization: Bearer <METRICS_TOKEN>``, or a staff session. Without the
token set, only staff sessions. Anyone else gets the API's 401 or 403 error shape.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterator

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from dashboard.selectors import waiting_queues
from leaddist.health import database_ok, redis_health
from leaddist.http.errors import error_response
from leaddist.http.metrics import MULTIPROCESS

logger = logging.getLogger(__name__)

# procrastinate's workers beat every 10 s and count as stalled after 30 s without a beat.
WORKER_ALIVE_SECONDS = 30

# The jobs due now (not scheduled for later), per queue, with how long the oldest has been
# due; and the background workers that beat recently. The todo jobs go through procrastinate's
# partial index on status; there are few unless no worker runs.
BACKGROUND_SQL = """
SELECT j.queue_name, count(*),
       greatest(extract(epoch FROM now() - min(coalesce(j.scheduled_at, e.at))), 0)::float8,
       (SELECT count(*) FROM procrastinate_workers
         WHERE last_heartbeat > now() - make_interval(secs => %(alive)s))
  FROM procrastinate_jobs j
  LEFT JOIN procrastinate_events e ON e.job_id = j.id AND e.type = 'deferred'
 WHERE j.status = 'todo' AND (j.scheduled_at IS NULL OR j.scheduled_at <= now())
 GROUP BY j.queue_name
 UNION ALL
SELECT NULL, 0, 0, (SELECT count(*) FROM procrastinate_workers
                     WHERE last_heartbeat > now() - make_interval(secs => %(alive)s))
"""


def _gauge(name: str, documentation: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels) or None)


class ScrapeTimeCollector:
    """The gauges read at scrape time. Without a database only the health gauges come out."""

    def collect(self) -> Iterator[Metric]:
        database = database_ok()
        yield GaugeMetricFamily(
            "leaddist_database_up",
            "1 when PostgreSQL answers (as /healthz checks), else 0.",
            value=int(database),
        )
        redis = redis_health()
        if redis != "disabled":
            yield GaugeMetricFamily(
                "leaddist_redis_up",
                "1 when Redis answers a PING (as /healthz checks), else 0; absent without "
                "REDIS_URL.",
                value=int(redis == "ok"),
            )
        if database:
            yield from self._read("waiting queues", self._queues)
            yield from self._read("the background queue", self._background)

    def _read(self, what: str, read: Callable[[], list[Metric]]) -> list[Metric]:
        try:
            return read()
        except Exception:
            # A scrape must still answer with the rest; the next one reads again.
            logger.exception("/metrics: reading %s failed", what)
            return []

    def _queues(self) -> list[Metric]:
        waiting = _gauge(
            "leaddist_leads_waiting", "Leads waiting for providers, per service.", ("service",)
        )
        oldest = _gauge(
            "leaddist_leads_waiting_oldest_seconds",
            "How long the oldest waiting lead of the service has waited (0: none waits).",
            ("service",),
        )
        for queue in waiting_queues():
            waiting.add_metric([queue.slug], queue.waiting)
            oldest.add_metric([queue.slug], queue.oldest_age_seconds)
        return [waiting, oldest]

    def _background(self) -> list[Metric]:
        due = _gauge(
            "leaddist_background_jobs_due",
            "Background jobs due to run and not started, per procrastinate queue.",
            ("queue",),
        )
        oldest = _gauge(
            "leaddist_background_jobs_oldest_due_seconds",
            "How long the oldest job due in the queue has waited for a worker.",
            ("queue",),
        )
        workers = 0
        with connection.cursor() as cursor:
            cursor.execute(BACKGROUND_SQL, {"alive": WORKER_ALIVE_SECONDS})
            for queue, count, age, alive in cursor.fetchall():
                workers = alive
                if queue is not None:
                    due.add_metric([queue], count)
                    oldest.add_metric([queue], age)
        alive_workers = GaugeMetricFamily(
            "leaddist_background_workers",
            f"Background workers (procrastinate) that sent a heartbeat in the last "
            f"{WORKER_ALIVE_SECONDS} s.",
            value=workers,
        )
        return [due, oldest, alive_workers]


def exposition() -> bytes:
    """Every metric in Prometheus' text format, read now."""
    registry = CollectorRegistry(auto_describe=False)
    if MULTIPROCESS:
        MultiProcessCollector(registry)  # every process's file in PROMETHEUS_MULTIPROC_DIR
    else:
        registry.register(REGISTRY)  # this process's counters, and its process_* metrics
    registry.register(ScrapeTimeCollector())
    return generate_latest(registry)


def _refusal(request: HttpRequest) -> HttpResponse | None:
    """None when the caller may scrape; else the API's 401 or 403."""
    header = request.headers.get("Authorization")
    if header is not None:
        # A wrong token is refused even with a staff session: the caller meant the token.
        scheme, _, token = header.strip().partition(" ")
        expected = settings.METRICS_TOKEN
        if (
            expected
            and scheme.lower() == "bearer"
            and hmac.compare_digest(token.strip().encode(), expected.encode())
        ):
            return None
        return error_response(401, "unauthorized", "The metrics token is wrong.")
    user = request.user
    if not user.is_authenticated:
        return error_response(
            401, "unauthorized", "Use `Authorization: Bearer <METRICS_TOKEN>` or a staff session."
        )
    if not user.is_staff:
        return error_response(403, "forbidden", "Only staff sessions may read the metrics.")
    return None


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """The metrics, to METRICS_TOKEN's bearer or a staff session."""
    refused = _refusal(request)
    if refused is not None:
        return refused
    response = HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response
