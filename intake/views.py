"""HTML views of the allocation app: the public request-service page (SPEC §3)."""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from allocation.selectors import intake_outcome
from allocation.services import Busy, DuplicateLead, ServiceUnavailable, intake_lead
from credentials.auth import check_intake_rate
from intake.forms import LeadForm
from leaddist.http.audit import log_event
from leaddist.http.db import once_more_if_lost
from leaddist.http.metrics import count_lead
from leaddist.http.ratelimit import RateLimited, client_ip

FORM_SOURCE = "form"
TEMPLATE = "intake/request_service.html"


def _page(request: HttpRequest, context: dict[str, Any], *, status: int = 200) -> HttpResponse:
    return render(request, TEMPLATE, context, status=status)


@require_http_methods(["GET", "POST"])
def request_service(request: HttpRequest) -> HttpResponse:
    """Public lead form; on POST it shows the outcome, the duplicate notice or the errors."""
    if request.method == "GET":
        return _page(request, {"form": LeadForm()})
    started = time.monotonic()
    trail: dict[str, Any] = {}

    def busy() -> HttpResponse:
        trail["outcome"] = "busy"
        response = _page(request, {"form": LeadForm(request.POST), "busy": True}, status=503)
        response["Retry-After"] = str(settings.BUSY_RETRY_AFTER_SECONDS)
        return response

    # As the API does: once more on a fresh connection, then "busy" (nothing was stored).
    response = once_more_if_lost(lambda: _submit_form(request, trail), lost_again=busy)
    count_lead(trail.get("outcome"))
    log_event(
        "lead",
        started=started,
        via="form",
        who=FORM_SOURCE,
        client=client_ip(request),
        status=response.status_code,
        **trail,
    )
    return response


def _submit_form(request: HttpRequest, trail: dict[str, Any]) -> HttpResponse:
    """Rate limit, fields, duplicate; ``trail`` collects what to log."""
    try:
        check_intake_rate(request, None)
    except RateLimited as limited:
        trail["outcome"] = "rate_limited"
        # Unbound, so the typed values come back without validating them again.
        form = LeadForm(initial=request.POST.dict())
        response = _page(request, {"form": form, "rate_limited": True}, status=429)
        response["Retry-After"] = str(limited.retry_after)
        return response
    form = LeadForm(request.POST)
    if not form.is_valid():
        trail["outcome"] = "invalid_request"
        return _page(request, {"form": form}, status=422)
    service = form.cleaned_data["service"]
    trail.update(service_id=service.pk, phone=form.cleaned_data["phone"])
    try:
        intake = intake_lead(form.lead_input(source=FORM_SOURCE))
    except DuplicateLead as exc:
        trail.update(outcome="duplicate_lead", lead_id=exc.lead_id)
        return _page(request, {"form": form, "duplicate": True}, status=409)
    except ServiceUnavailable as exc:
        trail["outcome"] = "invalid_request"
        form.add_error("service", str(exc))
        return _page(request, {"form": form}, status=422)
    except Busy as exc:
        trail["outcome"] = "busy"
        response = _page(request, {"form": form, "busy": True}, status=503)
        response["Retry-After"] = str(exc.retry_after)
        return response
    trail.update(outcome=intake.lead.status, lead_id=intake.lead.pk)
    return _page(request, {"outcome": intake_outcome(intake, service)})
