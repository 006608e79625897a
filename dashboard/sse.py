"""GET /api/events: the dashboard's Server-Sent Events stream (SPEC §6), staff only.

The stream itself is events.streams.follow: django-eventstream's wire format and ids, fed by
this process's hub. This view adds what SPEC §6 asks of the endpoint:

- refusals are real HTTP answers with the JSON error shape (401 anonymous, 403 non-staff, 400
  for a bad Last-Event-ID), where django-eventstream answers 200 with a ``stream-error`` event;
- an open stream holds no database connection while it waits;
- a stream whose session ends (sign-out, expiry, password change, staff rights removed) is
  closed within EVENT_SESSION_RECHECK_SECONDS, and its reconnection gets the 401 or 403.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.views.decorators.http import require_GET
from django_eventstream.channelmanager import ChannelManagerBase
from django_eventstream.utils import add_default_headers

from events.hub import in_thread
from events.streams import BadPosition, follow, parse_position, session_still_allows
from events.types import CHANNEL
from leaddist.http.errors import error_response


class StaffChannelManager(ChannelManagerBase):
    """One channel, "dashboard", stored (so replayable) and readable by staff only."""

    def get_channels_for_request(self, request: HttpRequest, view_kwargs: dict) -> set[str]:
        return {CHANNEL}

    def can_read_channel(self, user: AbstractBaseUser | AnonymousUser | None, channel: str) -> bool:
        return channel == CHANNEL and user is not None and bool(user.is_staff)

    def is_channel_reliable(self, channel: str) -> bool:
        return True


def _requested_position(request: HttpRequest) -> int | None:
    """Last-Event-ID, or else the last non-empty ?lastEventId= (EventSource cannot set headers
    on its first connection, so the page passes the position it was rendered at)."""
    header = request.headers.get("Last-Event-ID")
    if header:
        return parse_position(header)
    values = [value for value in request.GET.getlist("lastEventId") if value]
    return parse_position(values[-1]) if values else None


def _is_staff(user: Any) -> bool:
    return bool(user.is_authenticated and user.is_active and user.is_staff)


def session_is_still_staff(session_key: str) -> bool:
    """Read the session and its user afresh, as the next request would see them."""
    return session_still_allows(session_key, _is_staff, scope="staff")


def _refusal(request: HttpRequest) -> HttpResponse | None:
    """401 or 403 unless the session is a staff user's (reads the session and the user)."""
    user = request.user
    if not user.is_authenticated:
        return error_response(401, "unauthorized", "Sign in with a staff account first.")
    if not user.is_staff:
        return error_response(403, "forbidden", "Only staff may follow the dashboard stream.")
    return None


@require_GET
async def events_stream(request: HttpRequest) -> HttpResponse:
    """The dashboard channel over SSE; resumes after Last-Event-ID (or ?lastEventId=)."""
    # In a worker thread that hands its connection back: the request's own thread would keep
    # it checked out of the pool for as long as the stream stays open.
    refusal = await in_thread(_refusal, request)
    if refusal is not None:
        return refusal
    if "es-meta" in request.GET:
        # GRIP proxy metadata: leaddist serves its streams itself and takes no other identity.
        return error_response(400, "invalid_request", "es-meta is not supported.")
    try:
        position = _requested_position(request)
    except BadPosition:
        return error_response(
            400, "invalid_request", "Last-Event-ID (or lastEventId) is not a position to resume."
        )
    session_key = request.session.session_key or ""

    async def still_allowed() -> bool:
        return await in_thread(session_is_still_staff, session_key)

    response = StreamingHttpResponse(
        follow(position, still_allowed=still_allowed), content_type="text/event-stream"
    )
    add_default_headers(response, request=request)
    return response
