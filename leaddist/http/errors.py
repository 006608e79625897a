"""The one error shape of every endpoint (SPEC §3): {"error": {"code", "message", ...}}."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpResponse, JsonResponse


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def error_response(status: int, code: str, message: str, **extra: Any) -> JsonResponse:
    return JsonResponse(error_body(code, message, **extra), status=status)


def busy_response(message: str) -> JsonResponse:
    """503 busy with Retry-After: nothing was stored, the same request may be sent again."""
    response = error_response(503, "busy", message)
    response["Retry-After"] = str(settings.BUSY_RETRY_AFTER_SECONDS)
    return response


class Rejected(Exception):
    """The request fails a check; carries the error response's status, code and extras."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra

    def response(self) -> HttpResponse:
        return error_response(self.status, self.code, self.message, **self.extra)
