"""The provider portal's pages (SPEC §9): sign-in, sign-out, set password, the portal itself.

Every page after sign-in is wrapped by ``portal.access.provider_page`` and reads only the
signed-in provider's rows.
"""

from __future__ import annotations

from math import ceil

from django.contrib import messages
from django.contrib.auth import login as auth_login
from django.contrib.auth import logout as auth_logout
from django.contrib.auth.views import PasswordResetConfirmView
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse, reverse_lazy
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST

from allocation.services import Busy
from events.hub import current_position, stream_id
from leaddist.http.db import MAX_BIGINT
from portal import signin
from portal.access import account_of, provider_fragment, provider_page
from portal.delivery import UnsafeTarget, endpoint_of
from portal.forms import (
    EndpointForm,
    PortalRoutingForm,
    ProviderSignInForm,
    ReturnForm,
    VersionForm,
)
from portal.selectors import provider_allocation, provider_lead, provider_leads, provider_summary
from portal.services import set_provider_endpoint, set_provider_paused, set_provider_routing
from providers.forms import ERROR_FIELDS
from providers.services import EditConflict
from returns.models import Return
from returns.services import AlreadyReturned, OutsideWindow, return_lead

PAGE_SIZE = 20


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


def _int(value: str | None, default: int) -> int:
    return (
        int(value) if value and value.isascii() and value.isdigit() and len(value) < 9 else default
    )


def _home(
    request: HttpRequest,
    *,
    new_secret: str | None = None,
    routing_form: PortalRoutingForm | None = None,
) -> HttpResponse:
    account = request.account
    query = request.GET.get("q", "")[:120]
    page = max(_int(request.GET.get("page"), 1), 1)
    # The stream position is read before the data (as the dashboard does): an event committed
    # in between is rendered and replayed, and the page drops the duplicate.
    last_event_id = stream_id(current_position())
    items, count = provider_leads(
        account.provider, query=query, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
    )
    context = {
        "account": account,
        "nav": "portal",
        "summary": provider_summary(account.provider_id),
        "items": items,
        "count": count,
        "query": query,
        "page": page,
        "pages": max(ceil(count / PAGE_SIZE), 1),
        "reasons": Return.Reason.choices,
        "endpoint": endpoint_of(account.provider),
        "new_secret": new_secret,
        "routing_form": routing_form or PortalRoutingForm(provider=account.provider),
        "last_event_id": last_event_id,
    }
    response = render(request, "portal/home.html", context)
    if new_secret:
        response["Cache-Control"] = "no-store"
    if routing_form is not None:
        response.status_code = 422
    return response


@never_cache
@require_http_methods(["GET"])
@provider_page
def home(request: HttpRequest) -> HttpResponse:
    """The portal: the provider's numbers, settings and leads (?q= searches, ?page=)."""
    return _home(request)


@never_cache
@require_http_methods(["GET"])
@provider_fragment
def lead_row(request: HttpRequest, lead_id: int) -> HttpResponse:
    """One lead's row, for the page to insert or refresh when an event names it."""
    item = provider_lead(request.account.provider, lead_id) if lead_id <= MAX_BIGINT else None
    if item is None:
        raise Http404("You have no such lead.")
    context = {"item": item, "reasons": Return.Reason.choices}
    return render(request, "portal/_lead_row.html", context)


@never_cache
@require_http_methods(["GET"])
@provider_fragment
def summary(request: HttpRequest) -> HttpResponse:
    """The numbers, for the page to refresh when an event changes them."""
    context = {"summary": provider_summary(request.account.provider_id)}
    return render(request, "portal/_summary.html", context)


@require_POST
@provider_page
def return_form(request: HttpRequest, lead_id: int) -> HttpResponse:
    """Return a lead from the page (the JSON API's return, for people)."""
    allocation = (
        provider_allocation(request.account.provider, lead_id) if lead_id <= MAX_BIGINT else None
    )
    if allocation is None:
        raise Http404("You have no such lead.")
    form = ReturnForm(request.POST)
    if not form.is_valid():
        errors = "; ".join(str(m) for messages_ in form.errors.values() for m in messages_)
        messages.error(request, f"Lead #{lead_id} was not returned: {errors}")
        return HttpResponseRedirect(reverse("portal:home"))
    try:
        ret = return_lead(
            allocation,
            reason=form.cleaned_data["reason"],
            note=form.cleaned_data["note"],
            who=request.account.actor,
        )
    except (AlreadyReturned, OutsideWindow) as exc:
        messages.error(request, str(exc))
    except Busy:
        messages.error(request, "Too busy to record the return right now; try again.")
    else:
        shown = {
            Return.Status.APPROVED: "approved: one lead of quota is back"
            if ret.credited
            else "approved (your quota was already full)",
            Return.Status.PENDING: "waiting for the marketplace's staff",
        }.get(ret.status, ret.status)
        messages.success(request, f"Lead #{lead_id} returned: {shown}.")
    return HttpResponseRedirect(reverse("portal:home"))


def _seen_version(request: HttpRequest) -> int | None:
    form = VersionForm(request.POST)
    return form.cleaned_data.get("seen_version") if form.is_valid() else None


def _set_paused(request: HttpRequest, *, paused: bool) -> HttpResponse:
    try:
        set_provider_paused(request.account, paused=paused, seen_version=_seen_version(request))
    except EditConflict:
        messages.error(
            request,
            "Your provider was changed by someone else meanwhile; nothing was changed. "
            "Check its status below and try again.",
        )
    else:
        messages.success(request, "Paused: you get no new leads." if paused else "Resumed.")
    return HttpResponseRedirect(reverse("portal:home"))


@require_POST
@provider_page
def pause(request: HttpRequest) -> HttpResponse:
    """Pause the provider (the admin's service, its locks and its version check)."""
    return _set_paused(request, paused=True)


@require_POST
@provider_page
def resume(request: HttpRequest) -> HttpResponse:
    """Resume the provider; waiting leads of its services are drained."""
    return _set_paused(request, paused=False)


@require_POST
@provider_page
def endpoint(request: HttpRequest) -> HttpResponse:
    """Set the webhook URL and email; a first URL gets a secret, shown once on this answer."""
    form = EndpointForm(request.POST)
    if not form.is_valid():
        errors = "; ".join(str(m) for messages_ in form.errors.values() for m in messages_)
        messages.error(request, f"Nothing was saved: {errors}")
        return HttpResponseRedirect(reverse("portal:home"))
    try:
        new_secret = set_provider_endpoint(
            request.account, url=form.cleaned_data["url"], email=form.cleaned_data["email"]
        )
    except (UnsafeTarget, ValidationError) as exc:
        reason = "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
        messages.error(request, f"Nothing was saved: {reason}")
        return HttpResponseRedirect(reverse("portal:home"))
    messages.success(request, "Delivery saved.")
    if new_secret:
        return _home(request, new_secret=new_secret)
    return HttpResponseRedirect(reverse("portal:home"))


@require_POST
@provider_page
def rotate_secret(request: HttpRequest) -> HttpResponse:
    """A new webhook signing secret, shown once on this answer; the old one stops at once."""
    if not endpoint_of(request.account.provider).has_secret:
        messages.error(request, "Set a webhook URL first: only webhooks are signed.")
        return HttpResponseRedirect(reverse("portal:home"))
    new_secret = set_provider_endpoint(request.account, url=None, email=None, rotate_secret=True)
    messages.success(request, "Secret rotated.")
    return _home(request, new_secret=new_secret)


@require_POST
@provider_page
def routing(request: HttpRequest) -> HttpResponse:
    """Change the routing rules (the admin's fields, checks and service, within the limits
    staff set); a refused change shows the page again with the form's errors."""
    provider = request.account.provider
    form = PortalRoutingForm(request.POST, provider=provider)
    form.is_valid()
    rules = form.clean_routing_rules(provider)
    if form.errors:
        return _home(request, routing_form=form)
    if rules is None:
        messages.info(request, "Nothing to change in your routing rules.")
        return HttpResponseRedirect(reverse("portal:home"))
    try:
        set_provider_routing(request.account, rules, seen_version=form.cleaned_data["seen_version"])
    except EditConflict:
        messages.error(
            request,
            "Your provider was changed by someone else meanwhile; nothing was changed. "
            "Check your rules below and try again.",
        )
    except ValidationError as exc:
        form.add_routing_errors(exc, ERROR_FIELDS)
        return _home(request, routing_form=form)
    else:
        messages.success(request, "Routing rules saved.")
    return HttpResponseRedirect(reverse("portal:home"))
