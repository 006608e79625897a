"""POST /api/webhook/reset-quota: the payment gateway's quota-reset webhook (SPEC §5).

The view reads the raw body itself so that the checks run in SPEC order, on the exact bytes
that were signed: size (leaddist.http.middleware) -> signature (401) -> media type (415) ->
JSON (400) -> fields (422) -> idempotency (200 duplicate / 422 conflict).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Literal

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from ninja import Field, Router, Schema, Status

from allocation.services import Busy
from leaddist.http.audit import log_event
from leaddist.http.errors import Rejected, error_response
from leaddist.http.json_body import parse_json_body
from leaddist.http.metrics import count_webhook
from webhooks.models import EVENT_ID_MAX_LENGTH
from webhooks.services import (
    IdempotencyConflict,
    UnknownProviders,
    apply_quota_reset,
    canonical_body_sha256,
)
from webhooks.signing import InvalidSignature, verify_signature

logger = logging.getLogger(__name__)

router = Router(tags=["webhooks"])

_unsigned_warning = threading.Lock()
_unsigned_warned = False


class ResetQuotaIn(Schema):
    """The request body. Documentation only: the view parses the raw body itself."""

    eventId: str = Field(
        min_length=1,
        max_length=EVENT_ID_MAX_LENGTH,
        description="The idempotency key: one reset per eventId, whatever the webhook-id.",
    )
    # Not nullable: the view refuses null, so the schema must not offer it.
    providerIds: list[int] = Field(
        default=None,
        min_length=1,
        description="Reset only these providers (known ids). Leave it out to reset every one.",
        json_schema_extra=lambda schema: schema.pop("default"),
    )


class ResetQuotaOut(Schema):
    status: Literal["applied", "duplicate"]
    eventId: str
    leadsAllocated: int | None = Field(
        default=None,
        description="Waiting leads the drain after this reset allocated before answering "
        "(applied only; it drains for at most about a second).",
    )
    leadsWaiting: int | None = Field(
        default=None,
        description="Leads still waiting when it answered (applied only): a background drain "
        "goes on with them.",
    )


class ErrorDetail(Schema):
    code: str
    message: str
    fields: dict[str, list[str]] | None = Field(
        default=None, description="invalid_request: messages keyed by the field's name."
    )
    eventId: str | None = Field(default=None, description="idempotency_conflict: the event id.")


class ErrorOut(Schema):
    error: ErrorDetail


SIGNATURE_PARAMETERS = [
    {
        "name": name,
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": description
        + " Required whenever WEBHOOK_SECRET is set (always, with DEBUG off).",
    }
    for name, description in (
        ("webhook-id", "Standard Webhooks message id."),
        ("webhook-timestamp", "Unix seconds; must be within 5 minutes of the server's clock."),
        ("webhook-signature", "v1,<base64 HMAC-SHA256 of '{id}.{timestamp}.{body}'>."),
    )
]

OPENAPI_EXTRA: dict[str, Any] = {
    "parameters": SIGNATURE_PARAMETERS,
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": ResetQuotaIn.model_json_schema(),
                "examples": {
                    "all": {"summary": "Reset every provider", "value": {"eventId": "evt_1"}},
                    "some": {
                        "summary": "Reset providers 1 and 4",
                        "value": {"eventId": "evt_2", "providerIds": [1, 4]},
                    },
                },
            }
        },
    },
    "responses": {
        200: {"description": "applied (first delivery) or duplicate (any later delivery)."},
        400: {"description": "malformed_json: the body is empty or not parseable JSON."},
        401: {"description": "unauthorized: missing, invalid or expired signature."},
        413: {"description": "payload_too_large: body over 64 KiB."},
        415: {"description": "unsupported_media_type: Content-Type is not application/json."},
        422: {
            "description": "invalid_request (with fields: bad eventId or providerIds, unknown "
            "provider ids) or idempotency_conflict (eventId already used with another body)."
        },
        503: {"description": "busy: the database stayed contended; retry after Retry-After."},
    },
}


def _warn_unsigned_once() -> None:
    global _unsigned_warned
    with _unsigned_warning:
        if not _unsigned_warned:
            _unsigned_warned = True
            logger.warning(
                "WEBHOOK_SECRET is not set: /api/webhook/reset-quota accepts unsigned calls. "
                "This is allowed with DEBUG on only."
            )


def _reject_unsigned(request: HttpRequest, body: bytes) -> HttpResponse | None:
    secret = settings.WEBHOOK_SECRET
    if not secret:
        # Settings refuse to start without a secret unless DEBUG is on.
        _warn_unsigned_once()
        return None
    try:
        verify_signature(body, request.headers, secret=secret)
    except InvalidSignature as exc:
        return error_response(401, "unauthorized", f"Invalid webhook signature: {exc}")
    return None


def _storable(text: str) -> bool:
    # PostgreSQL text cannot hold NUL, and a lone surrogate cannot be encoded to UTF-8.
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _field_errors(payload: Any) -> dict[str, list[str]]:
    if not isinstance(payload, dict):
        return {"request": ["The body must be a JSON object."]}
    errors: dict[str, list[str]] = {}
    event_id = payload.get("eventId")
    if "eventId" not in payload:
        errors["eventId"] = ["This field is required."]
    elif not isinstance(event_id, str):
        errors["eventId"] = ["Must be a string."]
    elif not 1 <= len(event_id) <= EVENT_ID_MAX_LENGTH:
        errors["eventId"] = [f"Must be 1 to {EVENT_ID_MAX_LENGTH} characters long."]
    elif not _storable(event_id):
        errors["eventId"] = ["Must not contain NUL characters or unpaired surrogates."]
    if "providerIds" in payload:
        ids = payload["providerIds"]
        if not isinstance(ids, list):
            errors["providerIds"] = ["Must be a list of provider ids."]
        elif not ids:
            errors["providerIds"] = ["Must not be empty: leave it out to reset every provider."]
        elif any(isinstance(pk, bool) or not isinstance(pk, int) for pk in ids):
            errors["providerIds"] = ["Every provider id must be an integer."]
    return errors


@router.post(
    "/reset-quota",
    auth=None,
    response={
        200: ResetQuotaOut,
        400: ErrorOut,
        401: ErrorOut,
        413: ErrorOut,
        415: ErrorOut,
        422: ErrorOut,
        503: ErrorOut,
    },
    exclude_none=True,
    summary="Reset provider quotas (payment gateway webhook)",
    description=(
        "Sets remaining_quota = quota and starts a new cycle for every provider, or only for "
        "providerIds, exactly once per eventId; then allocates waiting leads. Signed with "
        "Standard Webhooks (webhook-id, webhook-timestamp, webhook-signature); no API key."
    ),
    openapi_extra=OPENAPI_EXTRA,
)
def reset_quota(request: HttpRequest) -> HttpResponse | Status[dict[str, Any]]:
    started = time.monotonic()
    response = _reset_quota(request)
    if isinstance(response, Status):
        outcome, event_id = response.value["status"], response.value["eventId"]
    else:
        error = json.loads(response.content)["error"]
        outcome, event_id = error["code"], error.get("eventId")
    count_webhook(outcome)
    log_event(
        "webhook",
        started=started,
        who="gateway",
        webhook_id=request.headers.get("webhook-id", "")[:EVENT_ID_MAX_LENGTH] or None,
        event_id=event_id,
        status=response.status_code,
        outcome=outcome,
        leads_allocated=response.value.get("leadsAllocated")
        if isinstance(response, Status)
        else None,
    )
    return response


def _reset_quota(request: HttpRequest) -> HttpResponse | Status[dict[str, Any]]:
    body = request.body  # at most MAX_BODY_BYTES: the size middleware has answered 413 above
    rejected = _reject_unsigned(request, body)
    if rejected is not None:
        return rejected
    try:
        payload = parse_json_body(request)
    except Rejected as rejected:
        return rejected.response()
    errors = _field_errors(payload)
    if errors:
        return error_response(422, "invalid_request", "The request is invalid.", fields=errors)
    try:
        body_sha256 = canonical_body_sha256(payload)
    except RecursionError:
        return error_response(400, "malformed_json", "The body is nested too deeply.")

    try:
        outcome = apply_quota_reset(
            event_id=payload["eventId"],
            body_sha256=body_sha256,
            provider_ids=payload.get("providerIds"),
        )
    except IdempotencyConflict as exc:
        return error_response(422, "idempotency_conflict", str(exc), eventId=exc.event_id)
    except UnknownProviders as exc:
        return error_response(
            422, "invalid_request", "The request is invalid.", fields={"providerIds": [str(exc)]}
        )
    except Busy as exc:
        response = error_response(503, "busy", str(exc))
        response["Retry-After"] = str(exc.retry_after)
        return response
    return Status(
        200,
        {
            "status": outcome.status,
            "eventId": outcome.event_id,
            "leadsAllocated": outcome.leads_allocated,
            "leadsWaiting": outcome.leads_waiting,
        },
    )
