"""The django-ninja API object: routers from the apps, and SPEC §3's error shape everywhere."""

from __future__ import annotations

import logging

from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.urls import resolve
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, AuthorizationError, HttpError, ValidationError

from credentials.auth import ApiKeyOrStaffSession, Unauthorized, api_credential_required
from intake.api import router as intake_router
from leaddist.http.db import connection_lost, recover
from leaddist.http.errors import busy_response, error_response
from webhooks.api import router as webhook_router

logger = logging.getLogger(__name__)

# Read methods commit nothing, so one cut off by a lost connection runs again on a fresh one.
RETRIED_READS = frozenset({"GET", "HEAD"})

api = NinjaAPI(
    title="leaddist API",
    version="1.0",
    description="Lead intake, read API and the quota-reset webhook. See SPEC.md.",
    urls_namespace="api",
    # Every route needs a key or a staff session unless it opts out: only the webhook does,
    # its signature being its credential. The schema and the docs need one too (SPEC §7).
    auth=ApiKeyOrStaffSession(),
    docs_decorator=api_credential_required,
)
api.add_router("/", intake_router)
api.add_router("/webhook", webhook_router)


@api.exception_handler(AuthenticationError)
def on_authentication_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return error_response(401, "unauthorized", "A valid API key or a staff session is required.")


@api.exception_handler(Unauthorized)
def on_unauthorized(request: HttpRequest, exc: Unauthorized) -> HttpResponse:
    return error_response(401, "unauthorized", exc.message)


@api.exception_handler(AuthorizationError)
def on_authorization_error(request: HttpRequest, exc: AuthorizationError) -> HttpResponse:
    return error_response(403, "forbidden", exc.message)


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


@api.exception_handler(DatabaseError)
def on_database_error(request: HttpRequest, exc: DatabaseError) -> HttpResponse:
    if not connection_lost(exc):
        return on_unexpected_error(request, exc)
    if request.method in RETRIED_READS and not getattr(request, "leaddist_read_retried", False):
        # The connection died under the read (between the pool's check and its first
        # statement, or in flight). Writes have their own retries (the engine's).
        request.leaddist_read_retried = True
        recover()
        match = resolve(request.path_info)
        return match.func(request, *match.args, **match.kwargs)
    # Nothing was stored: whatever could not reach the database did not commit. A committed
    # lead is answered from what the engine decided, and never reaches this.
    logger.warning("database unreachable in %s %s: %s", request.method, request.path, exc)
    return busy_response("The database is unreachable; retry later.")


@api.exception_handler(Exception)
def on_unexpected_error(request: HttpRequest, exc: Exception) -> HttpResponse:
    # Still a bug, logged with its traceback; the client gets the error shape, not HTML.
    logger.exception("unhandled error in %s %s", request.method, request.path)
    return error_response(500, "internal_error", "Something went wrong on our side.")
