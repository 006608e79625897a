"""Who may see the staff pages (SPEC §6): anonymous users log in first; others get 403.

The pieces a page fetches with a script answer 401 or 403 instead: a redirect would reach the
script as the login page's 200, and the page could not tell that its session has ended.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse

from leaddist.http.errors import error_response

View = Callable[..., HttpResponse]


def staff_page(view: View) -> View:
    """Redirect anonymous users to the login page (LOGIN_URL); answer 403 to non-staff."""
    if iscoroutinefunction(view):

        @wraps(view)
        async def async_wrapper(request: HttpRequest, *args: object, **kwargs: object) -> Any:
            user = await request.auser()
            if not user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not user.is_staff:
                raise PermissionDenied("This page is for staff only.")
            return await view(request, *args, **kwargs)

        return async_wrapper

    @wraps(view)
    def wrapper(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not request.user.is_staff:
            raise PermissionDenied("This page is for staff only.")
        return view(request, *args, **kwargs)

    return wrapper


def staff_fragment(view: View) -> View:
    """Answer 401 to anonymous users and 403 to non-staff, in the JSON error shape: for URLs
    that a page's script fetches, never a person's browser."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        if not request.user.is_authenticated:
            return error_response(401, "unauthorized", "The session has ended: sign in again.")
        if not request.user.is_staff:
            return error_response(403, "forbidden", "This page is for staff only.")
        return view(request, *args, **kwargs)

    return wrapper
