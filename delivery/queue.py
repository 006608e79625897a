"""The delivery queue: due deliveries claimed by workers, each provider's concurrency cap, and
the workers' heartbeats, which hand a dead worker's deliveries back within seconds.

``delivery_delivery`` is the queue itself (docs/DELIVERY.md, "The queue"): a delivery is due
when it is open and its ``next_attempt_at`` has come; a worker claims it (``worker_id``) for
the length of one attempt and records the attempt, which releases it. Nothing else keeps a
list of work, so nothing can lose it: a worker that dies mid-attempt leaves its claims behind,
and the next heartbeat of any other worker (or the worker's own restart on the same host)
hands them back to the queue.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from delivery import sql
from delivery.attempts import Send, send_from_claim

# A claim outlasts the attempt's own timeout by this much, in case its worker stops beating
# without dying (then its claims go back after the claim ends, not at the next heartbeat).
LEASE_MARGIN_SECONDS = 15
# Workers beat this often, and are taken for dead after this long without a beat.
HEARTBEAT_SECONDS = 1.0
DEAD_AFTER_SECONDS = 5.0
# A claim scans this many times the deliveries it may take, so that a provider at its cap
# (whose due deliveries it puts back a little) never hides the others' behind it.
SCAN_FACTOR = 4
# A provider at its cap whose attempts in flight all started less than YOUNG_SECONDS ago is
# busy, not hanging: its due deliveries come back after about BUSY_WAIT_SECONDS, soon enough
# for the claim that follows its next recorded attempts.
YOUNG_SECONDS = 1.0
BUSY_WAIT_SECONDS = 0.02


def lease_seconds() -> float:
    return settings.DELIVERY_TIMEOUT_SECONDS + LEASE_MARGIN_SECONDS


@dataclass(frozen=True)
class Claim:
    sends: list[Send]
    # Due deliveries put back because their provider was at its cap: more is due than was
    # taken, and a claim after the next attempts are recorded may take it.
    put_back: int = 0


def claim(worker_id: int, *, take: int) -> Claim:
    """Claim up to ``take`` due deliveries for the worker, oldest due first, never more than
    DELIVERY_PER_PROVIDER_CONCURRENCY in flight per provider across every worker; return what
    each attempt sends. One short transaction (sql.CLAIM)."""
    if take <= 0:
        return Claim([])
    params = {
        "key": sql.CLAIM_LOCK_KEY,
        "worker": worker_id,
        "now": timezone.now(),
        "take": take,
        "scan": take * SCAN_FACTOR,
        "per_provider": settings.DELIVERY_PER_PROVIDER_CONCURRENCY,
        "lease": lease_seconds(),
        "margin": LEASE_MARGIN_SECONDS,
        "young": YOUNG_SECONDS,
        "busy_wait": BUSY_WAIT_SECONDS,
    }
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql.CLAIM_LOCK, params)
        rows = sql.fetch(cursor, sql.CLAIM, params)
    return Claim([send_from_claim(row) for row in rows if row[0] is not None], rows[0][-1])


def register_worker() -> int:
    """A new worker's row (this host and process); return its id."""
    params = {"hostname": socket.gethostname(), "pid": os.getpid()}
    with connection.cursor() as cursor:
        return sql.fetch(cursor, sql.REGISTER, params)[0][0]


def beat(worker_id: int) -> bool:
    """The worker's heartbeat; False when its row is gone (it was taken for dead)."""
    with connection.cursor() as cursor:
        return bool(sql.fetch(cursor, sql.BEAT, {"worker": worker_id}))


def leave(worker_id: int) -> int:
    """The worker stops: its row goes, and whatever it still holds goes back to the queue."""
    with connection.cursor() as cursor:
        cursor.execute(sql.LEAVE, {"worker": worker_id})
    return reap_dead_workers()


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process: alive
        return False
    return False


def gone_on_this_host(worker_id: int) -> list[int]:
    """The other workers registered from this host whose process no longer exists (a worker the
    launcher restarts finds its killed predecessor here, without waiting for its silence)."""
    params = {"hostname": socket.gethostname(), "worker": worker_id}
    with connection.cursor() as cursor:
        rows = sql.fetch(cursor, sql.SAME_HOST, params)
    return [pk for pk, pid in rows if pid == os.getpid() or _process_gone(pid)]


def reap_dead_workers(*, gone: list[int] | None = None) -> int:
    """Delete dead workers (silent for DEAD_AFTER_SECONDS, or ``gone``) and put every delivery
    that a missing worker held back in the queue, due now; return how many."""
    params = {"dead_after": DEAD_AFTER_SECONDS, "gone": gone or []}
    with connection.cursor() as cursor:
        return len(sql.fetch(cursor, sql.REAP, params))


def release_claims(worker_id: int, *, keep: set[int]) -> int:
    """Put back in the queue the worker's claims other than ``keep`` (its attempts in flight):
    after a lost connection, a claim may have committed without the worker hearing of it."""
    params = {"worker": worker_id, "keep": sorted(keep)}
    with connection.cursor() as cursor:
        cursor.execute(sql.RELEASE, params)
        return cursor.rowcount


@dataclass(frozen=True)
class QueueHealth:
    pending: int
    retrying: int
    failed: int
    oldest_due_seconds: float
    stranded: int
    workers: int


def queue_health() -> QueueHealth:
    """The queue as /metrics shows it (sql.HEALTH)."""
    with connection.cursor() as cursor:
        row = sql.fetch(cursor, sql.HEALTH, {"dead_after": DEAD_AFTER_SECONDS})[0]
    pending, retrying, failed, oldest, stranded, workers = row
    return QueueHealth(pending, retrying, failed, float(oldest), stranded, workers)
