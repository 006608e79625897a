"""API credentials (SPEC §3): a lead source's API key, or a logged-in staff session."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from functools import wraps

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.auth.views import redirect_to_login
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connection
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.middleware.csrf import CsrfViewMiddleware
from django.utils import timezone
from ninja.errors import AuthenticationError, AuthorizationError
from ninja.security.http import HttpBearer

from credentials.models import ApiKey
from credentials.sql import USABLE_KEY_FIELDS, USABLE_KEY_SQL
from leaddist.http.db import connection_lost, recover
from leaddist.http.errors import error_response
from leaddist.http.ratelimit import client_ip, hit, parse_rate

# last_used_at is informative; writing it on every request would make each key a hot row.
LAST_USED_RESOLUTION = timedelta(seconds=60)


class Unauthorized(AuthenticationError):
    """No credential, or a wrong or revoked key: 401 unauthorized."""

    def __init__(self, message: str = "A valid API key or a staff session is required.") -> None:
        super().__init__(401, message)


class Forbidden(AuthorizationError):
    """A credential without the right (non-staff session, session write without CSRF): 403."""

    def __init__(self, message: str) -> None:
        super().__init__(403, message)


def _csrf_view(request: HttpRequest) -> None:
    """Stands for the view in the CSRF check; ninja's own views are all csrf_exempt."""


def _passes_csrf(request: HttpRequest) -> bool:
    """Django's own CSRF check (token and Origin/Referer), which skips safe methods."""
    middleware = CsrfViewMiddleware(lambda request: HttpResponseForbidden())
    middleware.process_request(request)
    return middleware.process_view(request, _csrf_view, (), {}) is None


class _VerifiedKeys:
    """Keys found usable, remembered for API_KEY_CACHE_SECONDS in each process.

    A marketplace sends every lead of a burst with one key; this spares each of them a query.
    A revocation therefore reaches every process within API_KEY_CACHE_SECONDS, and the one it
    was made in at once. Unknown and revoked keys are never remembered.
    """

    def __init__(self) -> None:
        self._keys: dict[str, tuple[float, ApiKey]] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> ApiKey | None:
        found = self._keys.get(key_hash)
        if found is None or time.monotonic() - found[0] >= settings.API_KEY_CACHE_SECONDS:
            return None
        return found[1]

    def put(self, key_hash: str, key: ApiKey) -> None:
        with self._lock:
            if len(self._keys) > 10_000:
                self._keys.clear()
            self._keys[key_hash] = (time.monotonic(), key)

    def clear(self) -> None:
        with self._lock:
            self._keys.clear()


verified_keys = _VerifiedKeys()


def _stored_key(key_hash: str) -> tuple | None:
    with connection.cursor() as cursor:
        cursor.execute(USABLE_KEY_SQL, [key_hash])
        return cursor.fetchone()


def usable_key(raw: str) -> ApiKey | None:
    """The key with this raw value, unless it is unknown or revoked.

    Usually a request's first database access: a connection found dead is replaced once.
    """
    key_hash = ApiKey.hash_key(raw)
    key = verified_keys.get(key_hash)
    if key is not None:
        return key
    try:
        row = _stored_key(key_hash)
    except DatabaseError as exc:
        if not connection_lost(exc):
            raise
        recover()
        row = _stored_key(key_hash)
    if row is None:
        return None
    key = ApiKey.from_db(DEFAULT_DB_ALIAS, USABLE_KEY_FIELDS, row)
    verified_keys.put(key_hash, key)
    return key


def touch_api_key(key: ApiKey) -> None:
    """Record the key's use, at most about once a minute per key."""
    now = timezone.now()
    stale = now - LAST_USED_RESOLUTION
    if key.last_used_at is not None and key.last_used_at > stale:
        return
    # Filtered, so concurrent requests that all saw a stale value write it only once.
    ApiKey.objects.filter(pk=key.pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lte=stale)
    ).update(last_used_at=now)
    key.last_used_at = now


def check_intake_rate(request: HttpRequest, principal: object | None) -> None:
    """Raise RateLimited if this lead submission is over its limit.

    An API key counts against its own limit (ApiKey.rate_limit, or RATE_LIMIT_PER_KEY); a
    request without credential (the public form) against RATE_LIMIT_PER_IP for its client
    address. Staff sessions are not limited: they are operators, and the test tools submit
    bursts of leads on their behalf.
    """
    if isinstance(principal, ApiKey):
        hit(f"key:{principal.pk}", principal.rate())
    elif principal is None:
        hit(f"ip:{client_ip(request)}", parse_rate(settings.RATE_LIMIT_PER_IP))


def source_name(principal: ApiKey | AbstractBaseUser) -> str:
    """What Lead.source records: the API key's name, or "staff:<username>"."""
    if isinstance(principal, ApiKey):
        return principal.name
    return f"staff:{principal.get_username()}"


class ApiKeyOrStaffSession(HttpBearer):
    """`Authorization: Bearer <key>`, or else a staff session (with CSRF for writes).

    Returns the ApiKey or the staff user, which ninja stores as ``request.auth``. Unlike
    ninja's session auth, which checks CSRF first, a request with no credential at all is a
    401 and never a 403.
    """

    # Read by ninja's Swagger UI only: it then sends the page's CSRF token with "Try it out",
    # so a staff session can write from /api/docs. The check itself is in __call__.
    csrf = True

    def __call__(self, request: HttpRequest) -> ApiKey | AbstractBaseUser:
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, token = header.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("Use `Authorization: Bearer <api key>`.")
            return self.authenticate(request, token.strip())
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            raise Unauthorized()
        if not user.is_staff:
            raise Forbidden("Only staff sessions may use the API.")
        if not _passes_csrf(request):
            raise Forbidden("A session request that writes needs its CSRF token.")
        return user

    def authenticate(self, request: HttpRequest, token: str) -> ApiKey:
        key = usable_key(token)
        if key is None:
            raise Unauthorized("The API key is wrong or revoked.")
        touch_api_key(key)
        return key


def api_credential_required(
    view: Callable[..., HttpResponse],
) -> Callable[..., HttpResponse]:
    """Guard the schema (/api/openapi.json) and the docs (/api/docs) like the API itself.

    The docs page is opened in a browser: with no credential at all it redirects to the login
    page, as staff pages do. Every other refusal is the API's 401 or 403.
    """

    @wraps(view)
    def wrapper(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        try:
            ApiKeyOrStaffSession()(request)
        except Unauthorized as exc:
            match = request.resolver_match
            is_page = match is not None and match.url_name == "openapi-view"
            if is_page and "Authorization" not in request.headers:
                return redirect_to_login(request.get_full_path())
            return error_response(401, "unauthorized", exc.message)
        except Forbidden as exc:
            return error_response(403, "forbidden", exc.message)
        return view(request, *args, **kwargs)

    return wrapper
