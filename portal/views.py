"""The provider portal's pages (SPEC §9): sign-in, sign-out, set password, the portal itself.

Every page after sign-in is wrapped by ``portal.access.provider_page`` and reads only the
signed-in provider's rows.
"""

from __future__ import annotations

from django.contrib.auth import login as auth_login
from django.contrib.auth import logout as auth_logout
from django.contrib.auth.views import PasswordResetConfirmView
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse, reverse_lazy
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST

from portal import signin
from portal.access import account_of, provider_page
from portal.forms import ProviderSignInForm


def _next_url(request: HttpRequest) -> str:
    wanted = request.POST.get("next") or request.GET.get("next") or ""
    if wanted and url_has_allowed_host_and_scheme(
        wanted, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return wanted
    return reverse("portal:home")


@sensitive_post_parameters()
@csrf_protect
@never_cache
@require_http_methods(["GET", "POST"])
def sign_in(request: HttpRequest) -> HttpResponse:
    """The sign-in form. Django's login() rotates the session key, so a session id planted
    before sign-in is worthless after it."""
    if request.method == "GET" and account_of(request.user) is not None:
        return HttpResponseRedirect(_next_url(request))
    bound = request.method == "POST"
    form = ProviderSignInForm(request, data=request.POST if bound else None)
    limited = signin.refusal(request, request.POST.get("username", "")) if bound else None
    if limited is not None:
        # Not even tried: the form stays unvalidated, so no password is checked.
        form = ProviderSignInForm(request, initial={"username": request.POST.get("username")})
    elif bound:
        if form.is_valid():
            auth_login(request, form.get_user())
            return HttpResponseRedirect(_next_url(request))
        signin.count_failure(request, request.POST.get("username", ""))
    context = {
        "form": form,
        "next": request.POST.get("next") or request.GET.get("next", ""),
        "limited": limited,
        "nav": "portal",
    }
    response = render(request, "portal/sign_in.html", context, status=429 if limited else 200)
    if limited is not None:
        response["Retry-After"] = str(limited.retry_after)
    return response


@require_POST
def sign_out(request: HttpRequest) -> HttpResponse:
    """Sign out (a POST with the CSRF token, so no other site can sign a provider out)."""
    auth_logout(request)
    return HttpResponseRedirect(reverse("portal:login"))


class SetPasswordView(PasswordResetConfirmView):
    """The one-time link of create_provider_user: choose a password, then sign in."""

    template_name = "portal/set_password.html"
    success_url = reverse_lazy("portal:login")
    post_reset_login = False


set_password = SetPasswordView.as_view()


@never_cache
@require_http_methods(["GET"])
@provider_page
def home(request: HttpRequest) -> HttpResponse:
    """The portal: the provider's numbers and leads."""
    return render(request, "portal/home.html", {"account": request.account, "nav": "portal"})
