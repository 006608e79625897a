"""GET /metrics: Prometheus' view of leaddist, for operators (docs/OPERATIONS.md, Metrics).

Two kinds of metric come out:

- what the processes counted as they worked (leaddist.http.metrics): added up over every web and
  background worker under leaddist.serve (multiprocess mode), this process's alone otherwise;
- what is read now, at scrape time, by :class:`ScrapeTimeCollector`: database and Redis health
  (the checks /healthz makes), the waiting queue of every service, the background queue
  (through procrastinate's API) and the delivery queue. A few small queries per scrape, none
  per lead.

Who may scrape: ``Authorization: Bearer <METRICS_TOKEN>``, or a staff session. Without the
token set, only staff sessions. Anyone else gets the API's 401 or 403 error shape.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterator

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from procrastinate.contrib.django import app
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from dashboard.selectors import waiting_queues
from delivery.queue import queue_health
from leaddist.health import database_ok, redis_health
from leaddist.http.errors import error_response
from leaddist.http.metrics import MULTIPROCESS

logger = logging.getLogger(__name__)


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
            yield from self._read("the delivery queue", self._delivery)

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
        todo = _gauge(
            "leaddist_background_jobs_todo",
            "Background jobs (drains, housekeeping) not started yet, due or scheduled, per "
            "procrastinate queue (read through procrastinate's own API).",
            ("queue",),
        )
        for queue in app.job_manager.list_queues(status="todo"):
            todo.add_metric([queue["name"]], queue["todo"])
        return [todo]

    def _delivery(self) -> list[Metric]:
        health = queue_health()
        by_status = _gauge(
            "leaddist_deliveries", "Deliveries by status (open ones, and failed).", ("status",)
        )
        by_status.add_metric(["pending"], health.pending)
        by_status.add_metric(["retrying"], health.retrying)
        by_status.add_metric(["failed"], health.failed)
        return [
            by_status,
            GaugeMetricFamily(
                "leaddist_delivery_oldest_due_seconds",
                "How long the oldest due delivery has waited for a delivery worker (0: none).",
                value=health.oldest_due_seconds,
            ),
            GaugeMetricFamily(
                "leaddist_deliveries_stranded",
                "Deliveries in flight on a delivery worker that stopped beating; any live "
                "worker hands them back to the queue within seconds.",
                value=health.stranded,
            ),
            GaugeMetricFamily(
                "leaddist_delivery_workers",
                "Delivery workers that beat in the last few seconds.",
                value=health.workers,
            ),
        ]


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
