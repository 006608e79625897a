"""The middleware stack: body size guard, security headers, sessions, CSRF, auth, error shape.

Every middleware here runs natively in both modes. Under ASGI, Django's own middleware
(MiddlewareMixin) runs each process_request and process_response through ``sync_to_async``: a
hop to a worker thread and back, twice per middleware and per request, which cost more than
the whole allocation. So leaddist.asgi loads the twins below in their place (ASYNC_TWINS),
which run those hooks inline on the event loop wherever they cannot block (no database, no
file, no network), and keep the thread hop for the cases that can: a session that must be
saved, messages stored in the session, a static file read from disk. Which case is which is
stated next to each class. settings.MIDDLEWARE keeps Django's own names, so its system checks
(check --deploy) and the sync handler (tests, WSGI) see the standard stack.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from io import BytesIO
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware as DjangoAuthentication
from django.contrib.messages.middleware import MessageMiddleware as DjangoMessages
from django.contrib.sessions.middleware import SessionMiddleware as DjangoSessions
from django.http import HttpRequest, HttpResponse
from django.middleware.clickjacking import XFrameOptionsMiddleware as DjangoXFrameOptions
from django.middleware.common import CommonMiddleware as DjangoCommon
from django.middleware.csrf import CsrfViewMiddleware as DjangoCsrf
from django.middleware.security import SecurityMiddleware as DjangoSecurity
from whitenoise.middleware import WhiteNoiseMiddleware

from leaddist.http.db import is_transient
from leaddist.http.errors import busy_response, error_body, error_response

GetResponse = Callable[[HttpRequest], Any]


class BothModes:
    """A middleware that is a plain function call in either mode: subclasses define
    ``handle(request, response)`` on the way out and optionally ``refuse(request)`` on the way
    in, neither of which may block."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def refuse(self, request: HttpRequest) -> HttpResponse | None:
        return None

    def handle(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        return response

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self._acall(request)
        return self.handle(request, self.refuse(request) or self.get_response(request))

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        refused = self.refuse(request)
        return self.handle(request, refused or await self.get_response(request))


class InlineHooks:
    """Run a Django MiddlewareMixin's hooks inline under ASGI unless the request needs a thread.

    ``request_blocks`` / ``response_blocks`` say when a hook may touch the database or a file;
    then, and only then, it runs through ``sync_to_async`` as Django would.
    """

    async_mode: bool
    get_response: GetResponse

    def __init__(self, get_response: GetResponse) -> None:
        super().__init__(get_response)  # type: ignore[call-arg]
        if self.async_mode and hasattr(self, "process_view"):
            # Django wraps a sync process_view in sync_to_async; an async one it awaits.
            sync_process_view = self.process_view

            async def process_view(*args: Any) -> HttpResponse | None:
                return sync_process_view(*args)

            self.process_view = process_view

    def request_blocks(self, request: HttpRequest) -> bool:
        return False

    def response_blocks(self, request: HttpRequest, response: HttpResponse) -> bool:
        return False

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        response = None
        if hasattr(self, "process_request"):
            if self.request_blocks(request):
                response = await sync_to_async(self.process_request)(request)
            else:
                response = self.process_request(request)
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            if self.response_blocks(request, response):
                response = await sync_to_async(self.process_response)(request, response)
            else:
                response = self.process_response(request, response)
        return response


class SecurityMiddleware(InlineHooks, DjangoSecurity):
    """Redirects and headers only."""


class CommonMiddleware(InlineHooks, DjangoCommon):
    """Host checks, slash redirects (a URL resolution) and headers only."""


class XFrameOptionsMiddleware(InlineHooks, DjangoXFrameOptions):
    """A header only."""


class AuthenticationMiddleware(InlineHooks, DjangoAuthentication):
    """Sets a lazy ``request.user``; whoever reads it reads the session (in its own thread)."""


class CsrfViewMiddleware(InlineHooks, DjangoCsrf):
    """The token lives in a cookie (CSRF_USE_SESSIONS is off): no database involved."""

    def request_blocks(self, request: HttpRequest) -> bool:
        return settings.CSRF_USE_SESSIONS


class SessionMiddleware(InlineHooks, DjangoSessions):
    """Creating the lazy session store is free; saving a modified session writes a row."""

    def response_blocks(self, request: HttpRequest, response: HttpResponse) -> bool:
        session = getattr(request, "session", None)
        return session is not None and (session.modified or settings.SESSION_SAVE_EVERY_REQUEST)


class MessageMiddleware(InlineHooks, DjangoMessages):
    """Messages that were added or read may be stored in the session."""

    def response_blocks(self, request: HttpRequest, response: HttpResponse) -> bool:
        storage = getattr(request, "_messages", None)
        return storage is not None and (storage.used or storage.added_new)


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise, which is sync-only: static paths go to a thread (a file is read, or found
    on disk in DEBUG), every other request passes straight through."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        super().__init__(get_response)
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self._acall(request)
        return super().__call__(request)

    def _static_response(self, request: HttpRequest) -> HttpResponse | None:
        if self.autorefresh:
            static_file = self.find_file(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        return None if static_file is None else self.serve(static_file, request)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        if request.path_info.startswith(self.static_prefix):
            response = await sync_to_async(self._static_response)(request)
            if response is not None:
                return response
        return await self.get_response(request)


BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LIMITED_PREFIXES = ("/api/", "/request-service")


def _too_large_message() -> str:
    return f"The request body is larger than {settings.MAX_BODY_BYTES} bytes."


def is_limited(path: str, method: str) -> bool:
    return method in BODY_METHODS and path.startswith(LIMITED_PREFIXES)


# Django's middleware and the async-native twin leaddist.asgi loads in its place.
ASYNC_TWINS = {
    "django.middleware.security.SecurityMiddleware": SecurityMiddleware,
    "whitenoise.middleware.WhiteNoiseMiddleware": StaticFilesMiddleware,
    "django.contrib.sessions.middleware.SessionMiddleware": SessionMiddleware,
    "django.middleware.common.CommonMiddleware": CommonMiddleware,
    "django.middleware.csrf.CsrfViewMiddleware": CsrfViewMiddleware,
    "django.contrib.auth.middleware.AuthenticationMiddleware": AuthenticationMiddleware,
    "django.contrib.messages.middleware.MessageMiddleware": MessageMiddleware,
    "django.middleware.clickjacking.XFrameOptionsMiddleware": XFrameOptionsMiddleware,
}


class BodySizeLimitMiddleware(BothModes):
    """Answer 413 for a body over MAX_BODY_BYTES on the API and the public form.

    Checks the declared Content-Length, then reads at most one byte past the limit, so a body
    that lies about its length (or is chunked) cannot get past either. Under ASGI the body is
    already in memory (AsgiBodySizeLimit refused it past the limit as it streamed in).
    """

    def refuse(self, request: HttpRequest) -> HttpResponse | None:
        if is_limited(request.path, request.method or ""):
            limit = settings.MAX_BODY_BYTES
            try:
                declared = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                declared = 0
            if declared > limit:
                return error_response(413, "payload_too_large", _too_large_message())
            body = request.read(limit + 1)
            if len(body) > limit:
                return error_response(413, "payload_too_large", _too_large_message())
            request._body = body
            request._stream = BytesIO(body)
        return None


class ApiErrorShapeMiddleware(BothModes):
    """Give Django's own 404 and 405 answers under /api/ the JSON error shape."""

    CODES = {
        404: ("not_found", "No such route or object."),
        405: ("method_not_allowed", "Method not allowed."),
    }

    def handle(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if (
            request.path.startswith("/api/")
            and response.status_code in self.CODES
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            code, message = self.CODES[response.status_code]
            shaped = error_response(response.status_code, code, message)
            if "Allow" in response:
                shaped["Allow"] = response["Allow"]
            return shaped
        return response


class BusyDatabaseMiddleware(BothModes):
    """A lock wait that timed out (or a deadlock or serialization failure) in any view answers
    503 busy with Retry-After, never 500: the view's transaction was rolled back, so nothing is
    stored and the same request may be sent again. Views that retry on their own (the engine)
    never let one escape; this is the answer for every other write, such as an admin or portal
    edit that waits DB_LOCK_TIMEOUT_MS behind a long transaction."""

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_transient(exception):
            return None
        message = "The database is busy; nothing was saved. Try again shortly."
        if request.path.startswith(("/api/", "/portal/api/")):
            return busy_response(message)
        response = HttpResponse(
            f"<!doctype html><title>Busy</title><h1>Busy</h1><p>{message}</p>",
            status=503,
        )
        response["Retry-After"] = str(settings.BUSY_RETRY_AFTER_SECONDS)
        return response


Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class AsgiBodySizeLimit:
    """ASGI wrapper: refuse an oversized body while it streams in, before Django buffers it.

    Django's ASGI handler reads the whole body into a temporary file before any middleware
    runs; this counts the bytes as they arrive and answers 413 past the limit.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_limited(
            scope.get("path", ""), scope.get("method", "")
        ):
            await self.app(scope, receive, send)
            return
        limit = settings.MAX_BODY_BYTES
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await self._refuse(send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(send: Send) -> None:
        payload = json.dumps(error_body("payload_too_large", _too_large_message())).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


class ContentSecurityPolicyMiddleware(BothModes):
    """Send settings.CONTENT_SECURITY_POLICY with every response that has none of its own.

    The policy allows scripts from our own origin only, so an injected inline script or
    event-handler attribute does not run even if some text escapes escaping.
    """

    def handle(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if settings.CONTENT_SECURITY_POLICY and "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = settings.CONTENT_SECURITY_POLICY
        return response
