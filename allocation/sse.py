"""GET /api/events: the dashboard's Server-Sent Events stream (SPEC §6), staff only.

django-eventstream does the streaming and the Last-Event-ID replay from its stored events.
This view opens its stream itself rather than through django-eventstream's view, to add what
SPEC §6 asks:

- refusals are real HTTP answers with the JSON error shape (401 anonymous, 403 non-staff, 400
  for a bad Last-Event-ID), where django-eventstream answers 200 with a ``stream-error`` event;
- an open stream holds no pooled database connection while it waits. django-eventstream reads
  its storage in the request's thread before each wait, and Django would return that thread's
  connection to the pool only when the response ends: hours later, for a dashboard. So the
  connection is handed back after every chunk, before the stream waits again.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

from asgiref.sync import sync_to_async
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import connections
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.views.decorators.http import require_GET
from django_eventstream import EventPermissionError, EventRequest
from django_eventstream.channelmanager import ChannelManagerBase
from django_eventstream.utils import add_default_headers
from django_eventstream.views import Listener, stream

from allocation.events import CHANNEL
from leaddist.errors import error_response


class StaffChannelManager(ChannelManagerBase):
    """One channel, "dashboard", stored (so replayable) and readable by staff only."""

    def get_channels_for_request(self, request: HttpRequest, view_kwargs: dict) -> set[str]:
        return {CHANNEL}

    def can_read_channel(self, user: AbstractBaseUser | AnonymousUser | None, channel: str) -> bool:
        return channel == CHANNEL and user is not None and bool(user.is_staff)

    def is_channel_reliable(self, channel: str) -> bool:
        return True


def release_connections() -> None:
    """Return this thread's database connections to the pool, unless a transaction is open."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()


async def released_between_chunks(chunks: AsyncGenerator[str]) -> AsyncIterator[str]:
    """Pass the stream through, handing the database connection back before each wait."""
    async with aclosing(chunks) as inner:
        async for chunk in inner:
            # Thread-sensitive, so this runs in the thread where django-eventstream just read
            # its storage, and closes the very connection it used.
            await sync_to_async(release_connections)()
            yield chunk


@require_GET
def events_stream(request: HttpRequest) -> HttpResponse:
    """The dashboard channel over SSE; resumes after Last-Event-ID (or ?lastEventId=)."""
    user = request.user
    if not user.is_authenticated:
        return error_response(401, "unauthorized", "Sign in with a staff account first.")
    if not user.is_staff:
        return error_response(403, "forbidden", "Only staff may follow the dashboard stream.")
    if "es-meta" in request.GET:
        # GRIP proxy metadata: leaddist serves its streams itself and takes no other identity.
        return error_response(400, "invalid_request", "es-meta is not supported.")
    try:
        event_request = EventRequest(request, view_kwargs={"channels": [CHANNEL]})
    except EventPermissionError:
        return error_response(403, "forbidden", "Only staff may follow the dashboard stream.")
    except (EventRequest.Error, ValueError):
        return error_response(
            400, "invalid_request", "Last-Event-ID (or lastEventId) is not a position to resume."
        )
    finally:
        release_connections()
    listener = Listener()
    listener.user_id = user.pk
    listener.channels = event_request.channels
    response = StreamingHttpResponse(
        released_between_chunks(stream(event_request, listener)),
        content_type="text/event-stream",
    )
    add_default_headers(response, request=request)
    return response
