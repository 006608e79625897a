"""Who may use the portal (SPEC §9): a signed-in, active, non-staff user tied to a provider.

Every portal view is wrapped by one of these decorators, which put the account on the request
as ``request.account``; every portal read and write is then filtered by
``request.account.provider``. Pages send anonymous visitors to the portal's sign-in page; the
JSON API and the stream answer 401 or 403 in the error shape (SPEC §3), and check CSRF on every
write themselves, so a refusal is JSON too.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.middleware.csrf import CsrfViewMiddleware
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt

from leaddist.http.errors import error_response
from portal.models import ProviderUser

View = Callable[..., HttpResponse]

NOT_A_PROVIDER = "This page is for provider accounts; staff use the dashboard and the admin."


def account_of(user: AbstractBaseUser | AnonymousUser) -> ProviderUser | None:
    """The user's provider account, if it may use the portal now (active, never staff)."""
    if not user.is_authenticated or user.is_staff or user.is_superuser or not user.is_active:
        return None
    return ProviderUser.objects.select_related("provider", "user").filter(user_id=user.pk).first()


def provider_page(view: View) -> View:
    """Anonymous visitors sign in first; any other account but a provider's gets 403."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path(), reverse("portal:login"))
        account = account_of(request.user)
        if account is None:
            raise PermissionDenied(NOT_A_PROVIDER)
        request.account = account
        return view(request, *args, **kwargs)

    return wrapper


def provider_fragment(view: View) -> View:
    """For pieces a portal page's script fetches: 401 or 403 in the error shape, never a
    redirect (the script would get the sign-in page's 200 and insert it as a row)."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        if not request.user.is_authenticated:
            return error_response(401, "unauthorized", "The session has ended: sign in again.")
        account = account_of(request.user)
        if account is None:
            return error_response(403, "forbidden", NOT_A_PROVIDER)
        request.account = account
        return view(request, *args, **kwargs)

    return wrapper


def _csrf_view(request: HttpRequest) -> None:
    """Stands for the view in the CSRF check."""


def passes_csrf(request: HttpRequest) -> bool:
    """Django's own CSRF check (token and Origin/Referer); safe methods pass."""
    middleware = CsrfViewMiddleware(lambda request: HttpResponseForbidden())
    middleware.process_request(request)
    return middleware.process_view(request, _csrf_view, (), {}) is None


def provider_api(*methods: str) -> Callable[[View], View]:
    """A JSON endpoint of the portal: 405 for other methods, 401 anonymous, 403 for any account
    but a provider's and for a write without its CSRF token."""

    def decorate(view: View) -> View:
        @csrf_exempt  # checked below, after the credential, so a refusal keeps the error shape
        @wraps(view)
        def wrapper(request: HttpRequest, *args: object, **kwargs: object) -> Any:
            if request.method not in methods:
                response = error_response(405, "method_not_allowed", "Method not allowed.")
                response["Allow"] = ", ".join(methods)
                return response
            if not request.user.is_authenticated:
                return error_response(401, "unauthorized", "Sign in to the portal first.")
            account = account_of(request.user)
            if account is None:
                return error_response(403, "forbidden", NOT_A_PROVIDER)
            if not passes_csrf(request):
                return error_response(
                    403, "forbidden", "A session request that writes needs its CSRF token."
                )
            request.account = account
            return view(request, *args, **kwargs)

        return wrapper

    return decorate
