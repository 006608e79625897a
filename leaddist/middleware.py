"""Request guards that must run before any view reads the body, the API's error shape, CSP."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from io import BytesIO
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from leaddist.errors import error_body, error_response

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LIMITED_PREFIXES = ("/api/", "/request-service")


def _too_large_message() -> str:
    return f"The request body is larger than {settings.MAX_BODY_BYTES} bytes."


def is_limited(path: str, method: str) -> bool:
    return method in BODY_METHODS and path.startswith(LIMITED_PREFIXES)


class BodySizeLimitMiddleware:
    """Answer 413 for a body over MAX_BODY_BYTES on the API and the public form.

    Checks the declared Content-Length, then reads at most one byte past the limit, so a body
    that lies about its length (or is chunked) cannot get past either.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
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
        return self.get_response(request)


class ApiErrorShapeMiddleware:
    """Give Django's own 404 and 405 answers under /api/ the JSON error shape."""

    CODES = {
        404: ("not_found", "No such route or object."),
        405: ("method_not_allowed", "Method not allowed."),
    }

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
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


class ContentSecurityPolicyMiddleware:
    """Send settings.CONTENT_SECURITY_POLICY with every response that has none of its own.

    The policy allows scripts from our own origin only, so an injected inline script or
    event-handler attribute does not run even if some text escapes escaping.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if settings.CONTENT_SECURITY_POLICY and "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = settings.CONTENT_SECURITY_POLICY
        return response
