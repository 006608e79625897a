"""The quota-reset webhook's business action (SPEC §5): reset once per event, then drain."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from allocation.models import Lead
from allocation.services import allocate_waiting_leads, run_with_retries
from events.services import record_event
from events.types import QUOTA_RESET
from leaddist.http.db import MAX_BIGINT
from providers.locks import lock_cursors, lock_providers, lock_providers_with_services
from providers.models import Provider, Service
from webhooks.models import ProcessedEvent
from webhooks.tasks import finish_quota_reset

logger = logging.getLogger(__name__)

APPLIED = "applied"
DUPLICATE = "duplicate"
UNIQUE_EVENT_ID = "webhooks_processedevent_unique_event_id"
# Provider ids are bigint: anything outside cannot exist, and must not reach the query.
# The background job that finishes a reset runs this long after it, by when the webhook's own
# bounded drain has normally announced it.
FINISH_AFTER_SECONDS = 5


class IdempotencyConflict(Exception):
    """The event id was already processed with a different body."""

    def __init__(self, event_id: str) -> None:
        super().__init__(f"Event {event_id!r} was already processed with a different body.")
        self.event_id = event_id


class UnknownProviders(Exception):
    """Some of the provider ids to reset do not exist; nothing was reset."""

    def __init__(self, provider_ids: list[int]) -> None:
        super().__init__("Unknown provider id(s): " + ", ".join(map(str, provider_ids)) + ".")
        self.provider_ids = provider_ids


@dataclass(frozen=True)
class ResetOutcome:
    event_id: str
    status: str  # APPLIED or DUPLICATE
    providers_reset: int = 0
    # How many waiting leads the webhook's own drain allocated, and how many were still
    # waiting when it answered (a background drain goes on); None for a duplicate, or when the
    # drain failed (the reset stands, and the background drain catches up).
    leads_allocated: int | None = None
    leads_waiting: int | None = None


def canonical_body_sha256(body: Mapping[str, Any]) -> str:
    """SHA-256 of the validated body as canonical JSON: keys sorted, providerIds sorted, unique.

    Every key counts, known or not, so "the same body" means the same JSON object whatever its
    key order, whitespace or the order and repeats of its provider ids.
    """
    canonical = dict(body)
    if isinstance(canonical.get("providerIds"), list):
        canonical["providerIds"] = sorted(set(canonical["providerIds"]))
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _constraint_name(exc: IntegrityError) -> str | None:
    return getattr(getattr(exc.__cause__, "diag", None), "constraint_name", None)


def _reset_providers(provider_ids: list[int] | None) -> int:
    """Lock in the engine's order and reset; return how many providers were reset.

    Cursors of the affected services first (by service pk), then the providers by pk: the
    order every allocation takes them in, so a reset can neither deadlock against one nor
    interleave with it. A plain bulk UPDATE would lock the providers in scan order instead.
    """
    if provider_ids is None:
        lock_cursors(Service.objects.values_list("pk", flat=True))
        locked = list(lock_providers(None))
    else:
        in_range = [pk for pk in provider_ids if 0 < pk <= MAX_BIGINT]
        locked = list(lock_providers_with_services(in_range)[1])
    if provider_ids is not None:
        missing = sorted(set(provider_ids) - set(locked))
        if missing:
            raise UnknownProviders(missing)  # rolls back the event row with everything else
    Provider.objects.filter(pk__in=locked).update(
        remaining_quota=F("quota"), cycle=F("cycle") + 1, leads_this_cycle=0, credits_this_cycle=0
    )
    return len(locked)


def _drain(event: ProcessedEvent) -> int | None:
    """Allocate waiting leads now that quota is back, for at most DRAIN_INLINE_SECONDS: the
    gateway gets its answer within 2 seconds whatever the length of the queue, and the
    background drain deferred with the reset does the rest. How many, or None if it failed."""
    try:
        return allocate_waiting_leads(deadline=time.monotonic() + settings.DRAIN_INLINE_SECONDS)
    except Exception:
        # The reset has committed and stands; failing the delivery would only make the gateway
        # retry into a duplicate. The background drain allocates the leads.
        logger.exception("drain after quota reset %r failed", event.event_id)
        return None


def announce_reset(event: ProcessedEvent, leads_allocated: int | None) -> bool:
    """Record quota.reset (once per event, whoever comes first) with the drain's count.

    The webhook announces after its bounded drain; if the process died before, the
    background drain does. A conditional UPDATE is the claim: two announcers cannot both win.
    """
    with transaction.atomic():
        claimed = ProcessedEvent.objects.filter(pk=event.pk, announced_at__isnull=True).update(
            announced_at=timezone.now(), leads_allocated=leads_allocated
        )
        if claimed:
            record_event(
                QUOTA_RESET,
                {
                    "event_id": event.event_id,
                    "provider_ids": event.provider_ids,
                    "leads_allocated": leads_allocated,
                },
            )
    return bool(claimed)


def finish_reset(processed_event_id: int) -> int:
    """The background half of a reset: drain the whole queue, then announce the reset if the
    webhook's process died before it could. Return how many leads this drain allocated."""
    allocated = allocate_waiting_leads()
    announce_reset(ProcessedEvent.objects.get(pk=processed_event_id), allocated)
    return allocated


def apply_quota_reset(
    *, event_id: str, body_sha256: str, provider_ids: Iterable[int] | None
) -> ResetOutcome:
    """Reset quotas exactly once per event id, then drain the waiting queue.

    1. One transaction: insert the ProcessedEvent row first. Its unique constraint is the
       guard: a concurrent delivery of the same id blocks on the index until we commit, then
       fails the insert and reads our row (READ COMMITTED takes a new snapshot per query).
    2. Still in it: lock the affected services' cursors, then the providers by pk, and set
       remaining_quota = quota, cycle + 1, leads_this_cycle = 0, credits_this_cycle = 0.
       Cursors and history stay.
       Defer the background job that finishes the reset (webhooks.tasks).
    3. After the commit: drain for at most DRAIN_INLINE_SECONDS, then announce quota.reset
       with how many leads that allocated, and answer with how many still wait.

    ``provider_ids`` None resets every provider. Raises IdempotencyConflict for a used id with
    another body, UnknownProviders (nothing reset, id not consumed), and Busy.
    """
    ids = sorted(set(provider_ids)) if provider_ids is not None else None

    def attempt(slack: int) -> tuple[ProcessedEvent, bool]:
        with transaction.atomic():
            event, created = ProcessedEvent.objects.get_or_create(
                event_id=event_id, defaults={"body_sha256": body_sha256, "provider_ids": ids}
            )
            if created:
                event.providers_reset = _reset_providers(ids)
                event.save(update_fields=["providers_reset"])
                # With the reset, in its transaction: if the process dies after the commit, a
                # worker still drains and announces it.
                finish_quota_reset.configure(
                    queueing_lock=f"finish_quota_reset:{event.pk}",
                    schedule_in={"seconds": FINISH_AFTER_SECONDS},
                ).defer(processed_event_id=event.pk)
        return event, created

    try:
        event, created = run_with_retries(attempt)
    except IntegrityError as exc:
        if _constraint_name(exc) != UNIQUE_EVENT_ID:
            raise
        # Only reached under an isolation level stricter than READ COMMITTED, where the
        # re-read inside the failed transaction could not see the winner's row.
        event, created = ProcessedEvent.objects.get(event_id=event_id), False

    if not created:
        if event.body_sha256 != body_sha256:
            raise IdempotencyConflict(event_id)
        return ResetOutcome(event_id=event_id, status=DUPLICATE)
    leads_allocated = _drain(event)
    # After the drain, so the event can say how many waiting leads the reset let through.
    announce_reset(event, leads_allocated)
    return ResetOutcome(
        event_id=event_id,
        status=APPLIED,
        providers_reset=event.providers_reset,
        leads_allocated=leads_allocated,
        leads_waiting=Lead.objects.waiting().count(),
    )
