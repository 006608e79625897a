"""GET /portal/api/events: the signed-in provider's live events over SSE (SPEC §9).

The dashboard's stream (events.streams.follow, one hub per process), with a scope: each event
is sent only if it concerns this provider, and reshaped to what the provider may see. A lead's
allocation says only that this provider got that lead, never who else did; a reset only that
this provider's quota was reset. Like the staff stream it refuses with real 401/403 answers,
holds no database connection while it waits, and re-reads the session every
EVENT_SESSION_RECHECK_SECONDS: a signed-out or deactivated account's stream ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django_eventstream.utils import add_default_headers

from events.hub import Frame, encode, in_thread
from events.streams import BadPosition, follow, parse_position, session_still_allows
from events.types import (
    DELIVERY_UPDATED,
    LEAD_ALLOCATED,
    LEAD_RETURNED,
    PROVIDER_UPDATED,
    QUOTA_RESET,
    RETURN_DECIDED,
)
from leaddist.http.errors import error_response
from portal.access import NOT_A_PROVIDER, account_of

_PASSED_ON = {
    PROVIDER_UPDATED: ("provider_id", "status", "quota", "remaining_quota"),
    LEAD_RETURNED: ("return_id", "lead_id", "reason", "status"),
    RETURN_DECIDED: ("return_id", "lead_id", "reason", "status", "credited"),
    DELIVERY_UPDATED: ("delivery_id", "lead_id", "channel", "status", "attempts"),
}


def scoped_data(provider_id: int, event_type: str, data: Any) -> dict[str, Any] | None:
    """What this provider may see of an event, or None if it is not theirs."""
    if not isinstance(data, dict):
        return None
    if event_type == LEAD_ALLOCATED:
        if provider_id in (data.get("provider_ids") or []):
            return {"lead_id": data.get("lead_id")}
        return None
    if event_type == QUOTA_RESET:
        reset = data.get("provider_ids")
        return {} if reset is None or provider_id in reset else None
    if event_type in _PASSED_ON and data.get("provider_id") == provider_id:
        return {key: data.get(key) for key in _PASSED_ON[event_type]}
    return None


def provider_scope(provider_id: int) -> Callable[[Frame], bytes | None]:
    def scope(frame: Frame) -> bytes | None:
        data = scoped_data(provider_id, frame.event_type, frame.payload)
        return None if data is None else encode(frame.seq, frame.event_type, data).data

    return scope


def session_is_still_provider(session_key: str, provider_id: int) -> bool:
    """Read the session and its user afresh: still an active account of this provider?"""

    def of_this_provider(user: Any) -> bool:
        account = account_of(user)
        return account is not None and account.provider_id == provider_id

    return session_still_allows(session_key, of_this_provider, scope=("provider", provider_id))


def _account_or_refusal(request: HttpRequest) -> tuple[int | None, HttpResponse | None]:
    if not request.user.is_authenticated:
        return None, error_response(401, "unauthorized", "Sign in to the portal first.")
    account = account_of(request.user)
    if account is None:
        return None, error_response(403, "forbidden", NOT_A_PROVIDER)
    return account.provider_id, None


async def events_stream(request: HttpRequest) -> HttpResponse:
    """This provider's events over SSE; resumes after Last-Event-ID (or ?lastEventId=)."""
    if request.method != "GET":
        response = error_response(405, "method_not_allowed", "Method not allowed.")
        response["Allow"] = "GET"
        return response
    provider_id, refusal = await in_thread(_account_or_refusal, request)
    if refusal is not None:
        return refusal
    assert provider_id is not None
    header = request.headers.get("Last-Event-ID")
    values = [value for value in request.GET.getlist("lastEventId") if value]
    try:
        position = parse_position(header or (values[-1] if values else None))
    except BadPosition:
        return error_response(
            400, "invalid_request", "Last-Event-ID (or lastEventId) is not a position to resume."
        )
    session_key = request.session.session_key or ""

    async def still_allowed() -> bool:
        return await in_thread(session_is_still_provider, session_key, provider_id)

    response = StreamingHttpResponse(
        follow(position, still_allowed=still_allowed, scope=provider_scope(provider_id)),
        content_type="text/event-stream",
    )
    add_default_headers(response, request=request)
    return response
