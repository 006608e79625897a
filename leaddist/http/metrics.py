"""What leaddist counts for Prometheus as it works: cheap enough for the intake hot path.

The instruments here are bumped where things happen (intake, the webhook, the live-event
wake-ups); what is read from the database at scrape time lives in leaddist.scrape, behind
GET /metrics. docs/OPERATIONS.md lists every metric and the alerts worth setting on them.

Under ``python -m leaddist.serve`` several processes count: the web workers and the background
workers. The launcher then sets PROMETHEUS_MULTIPROC_DIR, and prometheus-client keeps each
process's values in a memory-mapped file there, which /metrics adds up (multiprocess mode). It
must be set before prometheus-client is first imported: the client picks its storage once, at
import. A single process (`make run`, tests) keeps its values in memory.

Each bump is an in-memory (or memory-mapped) add under a lock: no query, no I/O.
"""

from __future__ import annotations

import os

from prometheus_client import Counter, Histogram

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

# An allocation is a few milliseconds; the upper buckets catch lock waits and retries, which
# end in 503 busy after DB_LOCK_TIMEOUT_MS (5 s by default).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

ALLOCATION_SECONDS = Histogram(
    "leaddist_allocation_seconds",
    "Time the engine spent on one submitted lead (intake_lead: locks, decision, writes, "
    "commit and retries), whatever the outcome.",
    buckets=LATENCY_BUCKETS,
)

# What a lead submission (API or public form) was answered, once it passed its credential.
LEAD_OUTCOMES = ("allocated", "waiting", "duplicate", "busy", "rate_limited", "invalid")
LEADS = Counter(
    "leaddist_leads",
    "Lead submissions by outcome: allocated (201), waiting (202), duplicate (409), "
    "busy (503), rate_limited (429), invalid (400/415/422).",
    ["outcome"],
)

WEBHOOK_OUTCOMES = (
    "applied",
    "duplicate",
    "bad_signature",
    "invalid",
    "idempotency_conflict",
    "busy",
)
WEBHOOKS = Counter(
    "leaddist_webhooks",
    "Quota-reset webhook calls by outcome: applied, duplicate (200), bad_signature (401), "
    "invalid (400/415/422), idempotency_conflict (422), busy (503).",
    ["outcome"],
)

PUBLISH_REASONS = ("redis_error", "breaker_open")
EVENT_PUBLISH_FAILURES = Counter(
    "leaddist_event_publish_failures",
    "Live-event wake-ups that did not reach the other processes through Redis: redis_error "
    "(the publish failed), breaker_open (skipped after a recent failure). Their dashboards "
    "get those events at their next poll instead (EVENT_POLL_SECONDS).",
    ["reason"],
)

EVENT_HUB_FAILURES = Counter(
    "leaddist_event_hub_failures",
    "Passes of a process's live-event hub that failed (reading the event log); the hub tries "
    "again at its next pass.",
)

# Lead delivery (docs/DELIVERY.md), counted by the delivery workers: what became of each attempt
# (delivery.sending.Outcome.kind takes one of these), and speed to lead, from the allocation
# (the delivery row written in its transaction) to the provider's 2xx.
DELIVERY_OUTCOMES = (
    "delivered",
    "http_error",
    "timeout",
    "network_error",
    "refused",
    "no_endpoint",
)
DELIVERY_ATTEMPTS = Counter(
    "leaddist_delivery_attempts",
    "Delivery attempts by outcome: delivered (2xx, or the mail server's acceptance), "
    "http_error (another answer), timeout, network_error, refused (the URL guard, or no "
    "usable secret), no_endpoint (the provider removed it).",
    ["outcome"],
)
DELIVERY_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
DELIVERY_LATENCY = Histogram(
    "leaddist_delivery_latency_seconds",
    "Speed to lead: from a lead's allocation to each provider's 2xx (or the mail server's "
    "acceptance), retries included.",
    buckets=DELIVERY_LATENCY_BUCKETS,
)
# Background workers (drains; deliveries) that died and were started again by leaddist.serve.
WORKER_RESTARTS = Counter(
    "leaddist_worker_restarts",
    "Background workers that exited and were started again by the launcher, by kind.",
    ["kind"],
)

# Every labelled series exists from the start, at 0: a rate over a series that appears only
# with its first failure would miss that failure.
for _outcome in LEAD_OUTCOMES:
    LEADS.labels(_outcome)
for _outcome in WEBHOOK_OUTCOMES:
    WEBHOOKS.labels(_outcome)
for _reason in PUBLISH_REASONS:
    EVENT_PUBLISH_FAILURES.labels(_reason)
for _outcome in DELIVERY_OUTCOMES:
    DELIVERY_ATTEMPTS.labels(_outcome)

# How the views' outcome codes (the ones they log) map onto the counters' outcomes. A code not
# listed here is not counted.
LEAD_CODES = {
    "allocated": "allocated",
    "waiting": "waiting",
    "duplicate_lead": "duplicate",
    "busy": "busy",
    "rate_limited": "rate_limited",
    "invalid_request": "invalid",
    "malformed_json": "invalid",
    "unsupported_media_type": "invalid",
}
WEBHOOK_CODES = {
    "applied": "applied",
    "duplicate": "duplicate",
    "unauthorized": "bad_signature",
    "invalid_request": "invalid",
    "malformed_json": "invalid",
    "unsupported_media_type": "invalid",
    "idempotency_conflict": "idempotency_conflict",
    "busy": "busy",
}
_lead_counters = {code: LEADS.labels(outcome) for code, outcome in LEAD_CODES.items()}
_webhook_counters = {code: WEBHOOKS.labels(outcome) for code, outcome in WEBHOOK_CODES.items()}


def count_lead(code: str | None) -> None:
    """Count a lead submission by the outcome code its view logged."""
    counter = _lead_counters.get(code or "")
    if counter is not None:
        counter.inc()


def count_webhook(code: str | None) -> None:
    """Count a webhook call by the outcome code its view logged."""
    counter = _webhook_counters.get(code or "")
    if counter is not None:
        counter.inc()


def count_publish_failure(reason: str) -> None:
    EVENT_PUBLISH_FAILURES.labels(reason).inc()
