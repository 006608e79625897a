"""The django-ninja API object: routers from the apps, and SPEC §3's error shape everywhere."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from leaddist.errors import error_response

api = NinjaAPI(
    title="leaddist API",
    version="1.0",
    description="Lead intake, read API and the quota-reset webhook. See SPEC.md.",
    urls_namespace="api",
)


@api.exception_handler(AuthenticationError)
def on_authentication_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return error_response(401, "unauthorized", "A valid API key or a staff session is required.")


@api.exception_handler(ValidationError)
def on_validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    fields: dict[str, list[str]] = {}
    for error in exc.errors:
        loc = [str(part) for part in error.get("loc", []) if part not in ("body", "query", "path")]
        fields.setdefault(".".join(loc) or "request", []).append(str(error.get("msg", "invalid")))
    return error_response(422, "invalid_request", "The request is invalid.", fields=fields)


@api.exception_handler(HttpError)
def on_http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    codes = {404: "not_found", 405: "method_not_allowed", 400: "malformed_json"}
    return error_response(exc.status_code, codes.get(exc.status_code, "error"), str(exc))
