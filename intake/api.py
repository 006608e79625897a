"""The leads API: intake (SPEC §3) and the read API (SPEC §4).

Intake is POST /api/leads and its alias POST /api/request-service. The handler reads the body
itself, so the checks run in the order SPEC §3 fixes: size (leaddist.http.middleware), credential
(ninja auth), rate limit, media type, JSON, fields, duplicate.

The read API is GET /api/leads, /api/leads/{id}, /api/providers, /api/services and
/api/services/{id}/forecast (allocation/forecast.py). Every
route here is on one router: ninja serves one path from one router only, so GET and POST
/api/leads must share it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from ninja import Query, Router, Schema

from allocation.forecast import MAX_LEADS, ForecastRefused, UnknownService, WhatIf, forecast
from allocation.models import Lead
from allocation.selectors import intake_outcome, lead_detail, lead_page, lead_summary, lead_trace
from allocation.services import Busy, DuplicateLead, ServiceUnavailable, intake_lead
from credentials.auth import ApiKeyOrStaffSession, check_intake_rate, source_name
from credentials.models import ApiKey
from delivery.selectors import lead_deliveries
from intake.forms import LeadData, LeadForm
from leaddist.http.audit import log_event
from leaddist.http.db import MAX_BIGINT, once_more_if_lost
from leaddist.http.errors import Rejected, busy_response, error_response
from leaddist.http.json_body import parse_json_body
from leaddist.http.metrics import count_lead
from leaddist.http.ratelimit import RateLimited, client_ip
from providers.models import Provider, Service
from providers.selectors import provider_list, provider_routing, service_list
from providers.services import canonical_cities
from returns.selectors import lead_returns

router = Router(auth=ApiKeyOrStaffSession(), tags=["leads"])

TEXT_FIELDS = ("name", "phone", "city")


class ServiceOut(Schema):
    id: int
    slug: str
    name: str


class ProviderOut(Schema):
    id: int
    name: str
    role: Literal["mandatory", "pool"]


class LeadOut(Schema):
    id: int
    status: Literal["allocated", "waiting", "expired"]
    service: ServiceOut
    providers: list[ProviderOut]
    created_at: datetime


class ErrorDetail(Schema):
    code: str
    message: str
    fields: dict[str, list[str]] | None = None
    lead_id: int | None = None


class ErrorOut(Schema):
    error: ErrorDetail


def _invalid(fields: dict[str, list[str]]) -> Rejected:
    return Rejected(422, "invalid_request", "The request is invalid.", fields=fields)


def _type_errors(data: dict[str, Any]) -> dict[str, list[str]]:
    """JSON types the form would otherwise coerce: a number is no name, a bool is no service."""
    errors: dict[str, list[str]] = {}
    for field in TEXT_FIELDS:
        if field in data and not isinstance(data[field], str):
            errors[field] = ["Must be a string."]
    description = data.get("description")
    if description is not None and not isinstance(description, str):
        errors["description"] = ["Must be a string or null."]
    service = data.get("service")
    if "service" in data and (isinstance(service, bool) or not isinstance(service, int | str)):
        errors["service"] = ["Must be a service id (integer) or slug (string)."]
    return errors


def validate_lead(data: Any) -> LeadForm:
    """Fields: a JSON object of well-typed values that LeadForm accepts, else 422."""
    if not isinstance(data, dict):
        raise _invalid({"request": ["The body must be a JSON object."]})
    type_errors = _type_errors(data)
    form = LeadData(
        data={
            field: value
            for field, value in data.items()
            if field in LeadData.base_fields and field not in type_errors and value is not None
        }
    )
    if form.is_valid() and not type_errors:
        return form
    fields = {field: list(messages) for field, messages in form.errors.items()}
    raise _invalid(fields | type_errors)


REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["name", "phone", "city", "service"],
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 120},
                    "phone": {
                        "type": "string",
                        "description": "Spaces, dashes, dots and parentheses are removed and "
                        "a leading + is kept; the result must be 7-15 digits.",
                        "example": "+1 (555) 010-0000",
                    },
                    "city": {"type": "string", "minLength": 1, "maxLength": 120},
                    "service": {
                        "description": "An active service: an integer or a string of digits "
                        "is an id, any other string a slug.",
                        "anyOf": [{"type": "integer"}, {"type": "string"}],
                        "example": "service-1",
                    },
                    "description": {"type": ["string", "null"], "maxLength": 2000},
                },
            }
        }
    },
}

RESPONSES = {
    201: LeadOut,
    202: LeadOut,
    400: ErrorOut,
    401: ErrorOut,
    403: ErrorOut,
    409: ErrorOut,
    413: ErrorOut,
    415: ErrorOut,
    422: ErrorOut,
    429: ErrorOut,
    503: ErrorOut,
}

DESCRIPTION = (
    "Store a lead and allocate it to 3 providers (201), or keep it waiting (202). "
    "Needs `Authorization: Bearer <api key>` or a staff session with its CSRF token. "
    "Checks run in this order: size (413), credential (401/403), rate limit (429), "
    "media type (415), JSON (400), fields (422), duplicate (409). 429 `rate_limited` and "
    "503 `busy` come with Retry-After."
)


@router.post(
    "/leads",
    response=RESPONSES,
    openapi_extra={"requestBody": REQUEST_BODY},
    operation_id="submit_lead",
    url_name="submit_lead",
    summary="Submit a lead",
    description=DESCRIPTION,
)
@router.post(
    "/request-service",
    response=RESPONSES,
    openapi_extra={"requestBody": REQUEST_BODY},
    operation_id="request_service",
    url_name="request_service",
    summary="Submit a lead (alias of POST /api/leads)",
    description=DESCRIPTION,
)
def submit(request: HttpRequest) -> HttpResponse:
    started = time.monotonic()
    trail: dict[str, Any] = {}

    def busy() -> HttpResponse:
        trail["outcome"] = "busy"
        return busy_response("The database is unreachable; retry later.")

    # Lost before anything committed (a committed lead is answered from the engine's decision):
    # once more, on a fresh connection; a second loss is answered 503 busy.
    response = once_more_if_lost(lambda: _submit(request, trail), lost_again=busy)
    count_lead(trail.get("outcome"))
    log_event(
        "lead",
        started=started,
        via="api",
        who=_who(request.auth),
        client=client_ip(request),
        status=response.status_code,
        **trail,
    )
    return response


def _who(principal: ApiKey | Any) -> str:
    return f"key:{principal.name}" if isinstance(principal, ApiKey) else source_name(principal)


def _submit(request: HttpRequest, trail: dict[str, Any]) -> HttpResponse:
    """The checks after the credential, in SPEC order; ``trail`` collects what to log."""
    try:
        check_intake_rate(request, request.auth)
    except RateLimited as limited:
        trail["outcome"] = "rate_limited"
        return limited.response()
    try:
        form = validate_lead(parse_json_body(request))
    except Rejected as rejected:
        trail["outcome"] = rejected.code
        return rejected.response()
    service = form.cleaned_data["service"]
    trail.update(service_id=service.pk, phone=form.cleaned_data["phone"])
    try:
        intake = intake_lead(form.lead_input(source=source_name(request.auth)))
    except DuplicateLead as exc:
        trail.update(outcome="duplicate_lead", lead_id=exc.lead_id)
        return error_response(
            409,
            "duplicate_lead",
            "A lead with this phone already exists for this service.",
            lead_id=exc.lead_id,
        )
    except ServiceUnavailable as exc:
        trail["outcome"] = "invalid_request"
        return _invalid({"service": [str(exc)]}).response()
    except Busy as exc:
        trail["outcome"] = "busy"
        return busy_response(str(exc))
    outcome = intake_outcome(intake, service)
    trail.update(outcome=outcome["status"], lead_id=intake.lead.pk)
    # The body is LeadOut by construction; a plain JsonResponse skips re-validating it.
    return JsonResponse(outcome, status=201 if outcome["status"] == "allocated" else 202)


# --- Read API (SPEC §4) ---------------------------------------------------------------------

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_OFFSET = MAX_BIGINT - MAX_LIMIT
SLUG = re.compile(r"[-a-zA-Z0-9_]{1,64}")


class TraceEntryOut(Schema):
    provider_id: int
    role: Literal["mandatory", "pool"]
    outcome: Literal["selected", "skipped"]
    reason: (
        Literal[
            "paused",
            "no_quota",
            "out_of_area",
            "time_off",
            "off_hours",
            "weekly_cap",
            "daily_cap",
            "already_selected",
        ]
        | None
    )


class LeadItemOut(LeadOut):
    name: str
    phone: str
    city: str
    city_key: str
    description: str
    source: str
    wait_reason: Literal["not_enough_providers", "queued"] | None
    allocated_at: datetime | None
    expired_at: datetime | None


class DeliveryOut(Schema):
    id: int
    provider_id: int
    channel: Literal["webhook", "email"]
    status: Literal["pending", "retrying", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    # Why the last attempt failed ("" when it did not, or none was made yet).
    last_error: str
    # When the next attempt is due (while in flight: when its claim runs out); null once
    # delivered or failed.
    next_attempt_at: datetime | None
    updated_at: datetime


class ReturnOut(Schema):
    id: int
    provider_id: int
    reason: Literal["wrong_number", "duplicate", "spam", "out_of_area", "other"]
    note: str
    status: Literal["pending", "approved", "rejected"]
    created_at: datetime
    decided_at: datetime | None


class LeadDetailOut(LeadItemOut):
    trace: list[TraceEntryOut]
    deliveries: list[DeliveryOut]
    returns: list[ReturnOut]


class LeadListOut(Schema):
    items: list[LeadItemOut]
    count: int


class RoutingOut(Schema):
    cities: list[str]
    timezone: str
    hours: str
    time_off: list[list[str]]
    daily_cap: int | None
    weekly_cap: int | None
    leads_today: int
    leads_this_week: int


class ProviderItemOut(Schema):
    id: int
    name: str
    status: Literal["active", "paused"]
    quota: int
    remaining_quota: int
    cycle: int
    leads_this_cycle: int
    leads_total: int
    routing: RoutingOut
    eligible_now: bool
    not_eligible_reason: (
        Literal["paused", "no_quota", "time_off", "off_hours", "weekly_cap", "daily_cap"] | None
    )
    eligible_again_at: datetime | None


class ProviderListOut(Schema):
    items: list[ProviderItemOut]
    count: int


class ServiceItemOut(Schema):
    id: int
    slug: str
    name: str
    active: bool
    mandatory: list[int]
    pool: list[int]
    next_pool_provider: int | None


class ServiceListOut(Schema):
    items: list[ServiceItemOut]
    count: int


READ_ERRORS = {401: ErrorOut, 403: ErrorOut, 422: ErrorOut}
LIMIT = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="Items per page, 1 to 200.")
OFFSET = Query(0, ge=0, le=MAX_OFFSET, description="Items to skip.")


def _reject_unknown_params(request: HttpRequest, *allowed: str) -> None:
    """A mistyped filter must not silently list everything: unknown parameters are a 422."""
    unknown = sorted(set(request.GET) - set(allowed))
    if unknown:
        raise _invalid({name: ["Unknown query parameter."] for name in unknown})


def _service_filter(value: str) -> int:
    """The id of the service named by id or slug (active or not); 422 if there is none."""
    if value.isascii() and value.isdigit():
        found = int(value) <= MAX_BIGINT and Service.objects.filter(pk=int(value)).exists()
        if found:
            return int(value)
    elif SLUG.fullmatch(value):
        service_id = Service.objects.filter(slug=value).values_list("pk", flat=True).first()
        if service_id is not None:
            return service_id
    raise _invalid({"service": ["Unknown service."]})


@router.get(
    "/leads",
    response={200: LeadListOut, **READ_ERRORS},
    operation_id="list_leads",
    summary="List leads, newest first",
    description="Filter by `service` (id or slug), `status` and `provider` (id). An unknown "
    "service or provider, or an unknown query parameter, is a 422.",
)
def list_leads(
    request: HttpRequest,
    limit: int = LIMIT,
    offset: int = OFFSET,
    service: str | None = Query(None, min_length=1, description="A service id or slug."),
    status: Literal["allocated", "waiting", "expired"] | None = Query(None),
    provider: int | None = Query(None, ge=1, le=MAX_BIGINT, description="A provider id."),
) -> HttpResponse | dict[str, Any]:
    try:
        _reject_unknown_params(request, "limit", "offset", "service", "status", "provider")
        service_id = _service_filter(service) if service is not None else None
        if provider is not None and not Provider.objects.filter(pk=provider).exists():
            raise _invalid({"provider": ["Unknown provider."]})
    except Rejected as rejected:
        return rejected.response()
    leads, count = lead_page(
        limit=limit, offset=offset, service_id=service_id, status=status, provider_id=provider
    )
    return {"items": [lead_summary(lead) for lead in leads], "count": count}


@router.get(
    "/leads/{int:lead_id}",
    response={200: LeadDetailOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 422: ErrorOut},
    operation_id="get_lead",
    summary="A lead, its providers, its decision trace, its deliveries and its returns",
)
def get_lead(request: HttpRequest, lead_id: int) -> HttpResponse | dict[str, Any]:
    try:
        _reject_unknown_params(request)
    except Rejected as rejected:
        return rejected.response()
    lead: Lead | None = lead_detail(lead_id) if lead_id <= MAX_BIGINT else None
    if lead is None:
        return error_response(404, "not_found", f"No lead with id {lead_id}.")
    return lead_summary(lead) | {
        "trace": lead_trace(lead),
        "deliveries": lead_deliveries(lead.pk),
        "returns": lead_returns(lead.pk),
    }


def _page(
    request: HttpRequest,
    selector: Callable[..., tuple[list[Any], int]],
    *,
    limit: int,
    offset: int,
) -> HttpResponse | dict[str, Any]:
    """A list endpoint without filters: refuse unknown parameters, then one page."""
    try:
        _reject_unknown_params(request, "limit", "offset")
    except Rejected as rejected:
        return rejected.response()
    items, count = selector(limit=limit, offset=offset)
    return {"items": items, "count": count}


@router.get(
    "/providers",
    response={200: ProviderListOut, **READ_ERRORS},
    operation_id="list_providers",
    summary="List providers, newest first",
)
def list_providers(
    request: HttpRequest, limit: int = LIMIT, offset: int = OFFSET
) -> HttpResponse | dict[str, Any]:
    page = _page(request, provider_list, limit=limit, offset=offset)
    if isinstance(page, dict):
        now = timezone.now()
        page["items"] = [_provider_item(provider, now) for provider in page["items"]]
    return page


def _provider_item(provider: Provider, now: datetime) -> dict[str, Any]:
    return {
        "id": provider.pk,
        "name": provider.name,
        "status": provider.status,
        "quota": provider.quota,
        "remaining_quota": provider.remaining_quota,
        "cycle": provider.cycle,
        "leads_this_cycle": provider.leads_this_cycle,
        "leads_total": provider.leads_total,
    } | provider_routing(provider, now)


@router.get(
    "/providers/{int:provider_id}",
    response={200: ProviderItemOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 422: ErrorOut},
    operation_id="get_provider",
    summary="A provider, its routing rules, and whether it can take a lead now",
    description="`eligible_now` leaves the area out (it depends on the lead's city). When it is "
    "false, `not_eligible_reason` says why and `eligible_again_at` when the time rules let the "
    "provider take leads again (null: not by time alone, e.g. paused or out of quota).",
)
def get_provider(request: HttpRequest, provider_id: int) -> HttpResponse | dict[str, Any]:
    try:
        _reject_unknown_params(request)
    except Rejected as rejected:
        return rejected.response()
    provider = (
        Provider.objects.filter(pk=provider_id).first() if provider_id <= MAX_BIGINT else None
    )
    if provider is None:
        return error_response(404, "not_found", f"No provider with id {provider_id}.")
    return _provider_item(provider, timezone.now())


@router.get(
    "/services",
    response={200: ServiceListOut, **READ_ERRORS},
    operation_id="list_services",
    summary="List services with their providers, newest first",
    description="`mandatory` and `pool` are provider ids in position order. "
    "`next_pool_provider` is the first eligible pool provider after the cursor (wrapping): "
    "the pool provider the next lead of the service takes first, unless its mandatory "
    "providers fill all 3 slots or it has to wait. Null when no pool provider is eligible.",
)
def list_services(
    request: HttpRequest, limit: int = LIMIT, offset: int = OFFSET
) -> HttpResponse | dict[str, Any]:
    return _page(request, service_list, limit=limit, offset=offset)


class ForecastProviderOut(Schema):
    id: int
    name: str
    role: Literal["mandatory", "pool"]
    rank: int


class ForecastLeadOut(Schema):
    n: int
    status: Literal["allocated", "waiting"]
    providers: list[ForecastProviderOut] | None = None
    reason: Literal["not_enough_providers", "queued"] | None = None


class ForecastInvolvedOut(Schema):
    id: int
    name: str
    leads_left: int
    runs_out_at: int | None


class ForecastBasisOut(Schema):
    at: datetime
    city: str
    cursor: int | None
    waiting_ahead: int
    drained_first: int


class QuotaAssumedOut(Schema):
    provider: int
    quota: int


class CitiesAssumedOut(Schema):
    provider: int
    cities: list[str]


class WhatIfOut(Schema):
    pause: list[int]
    resume: list[int]
    quota: list[QuotaAssumedOut]
    cities: list[CitiesAssumedOut]


class ForecastOut(Schema):
    leads: list[ForecastLeadOut]
    providers: list[ForecastInvolvedOut]
    based_on: ForecastBasisOut
    what_if: WhatIfOut


FORECAST_PARAMS = ("leads", "city", "at", "pause", "resume", "quota", "cities")
PROVIDER_ID = r"[1-9][0-9]{0,17}"
QUOTA_MAX = 2**31 - 1
FORECAST_AT = Query(None, description="When the leads arrive (ISO 8601); default now.")
ASSUME_PAUSED = Query([], description="Assume this provider paused (repeatable).")
ASSUME_RESUMED = Query([], description="Assume this provider resumed (repeatable).")
ASSUME_QUOTA = Query([], description="ID:N: assume this provider's quota is N (repeatable).")
ASSUME_CITIES = Query([], description="ID:Oslo|Bergen: assume these cities (repeatable).")


def _text(name: str, value: str) -> str:
    """Text that PostgreSQL can take: no NUL, no lone surrogate; a 422 otherwise."""
    if "\x00" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise _invalid({name: ["Text must not contain NUL characters or unpaired surrogates."]})
    return value


def _what_if(pause: list[int], resume: list[int], quota: list[str], cities: list[str]) -> WhatIf:
    """The what-if parameters, parsed; a 422 names each malformed or repeated one."""
    errors: dict[str, list[str]] = {}
    quotas: dict[int, int] = {}
    for item in quota:
        pid, _, number = item.partition(":")
        if not re.fullmatch(PROVIDER_ID, pid) or not re.fullmatch(r"[0-9]{1,10}", number):
            errors.setdefault("quota", []).append(f"“{item}” is not ID:N (e.g. 3:20).")
        elif int(number) > QUOTA_MAX or int(pid) in quotas:
            errors.setdefault("quota", []).append(f"“{item}”: too large, or repeated.")
        else:
            quotas[int(pid)] = int(number)
    areas: dict[int, tuple[str, ...]] = {}
    for item in cities:
        pid, sep, names = _text("cities", item).partition(":")
        if not sep or not re.fullmatch(PROVIDER_ID, pid) or int(pid) in areas:
            errors.setdefault("cities", []).append(
                f"“{item}” is not ID:City|City (e.g. 3:Oslo|Bergen; 3: for everywhere), "
                "or repeats a provider."
            )
        else:
            areas[int(pid)] = tuple(canonical_cities(names.split("|")))
    for name, ids in (("pause", pause), ("resume", resume)):
        if len(set(ids)) != len(ids):
            errors.setdefault(name, []).append("A provider is repeated.")
    if errors:
        raise _invalid(errors)
    return WhatIf(pause=tuple(pause), resume=tuple(resume), quota=quotas, cities=areas)


@router.get(
    "/services/{int:service_id}/forecast",
    response={200: ForecastOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 422: ErrorOut},
    operation_id="forecast_service",
    summary="What the next N leads of a service and city would get",
    description="Each of the next `leads` leads of the service and `city`, in arrival order: "
    "its providers, or why it would wait; each provider involved with what it has left and "
    "the lead after which it runs out. Exact while nothing else changes (docs/SPEC.md §2b). "
    "What-if (repeatable): `pause=ID`, `resume=ID`, `quota=ID:N`, `cities=ID:Oslo|Bergen` "
    "(`ID:` for everywhere), assumed made first. Read only: nothing is locked or written.",
)
def forecast_service(
    request: HttpRequest,
    service_id: int,
    leads: int = Query(..., ge=1, le=MAX_LEADS, description="How many leads, 1 to 1000."),
    city: str = Query("", max_length=120, description="The leads' city."),
    at: datetime | None = FORECAST_AT,
    pause: list[int] = ASSUME_PAUSED,
    resume: list[int] = ASSUME_RESUMED,
    quota: list[str] = ASSUME_QUOTA,
    cities: list[str] = ASSUME_CITIES,
) -> HttpResponse | dict[str, Any]:
    try:
        _reject_unknown_params(request, *FORECAST_PARAMS)
        for name, ids in (("pause", pause), ("resume", resume)):
            if any(not 1 <= pid <= MAX_BIGINT for pid in ids):
                raise _invalid({name: ["Unknown provider."]})
        what_if = _what_if(pause, resume, quota, cities)
        if at is not None and timezone.is_naive(at):
            at = timezone.make_aware(at)
        if service_id > MAX_BIGINT:
            raise UnknownService(service_id)
        answer = forecast(service_id, leads=leads, city=_text("city", city), at=at, what_if=what_if)
        # Written directly: a waiting lead has a reason and no providers, not both keys.
        return JsonResponse(answer, encoder=DjangoJSONEncoder)
    except Rejected as rejected:
        return rejected.response()
    except UnknownService:
        return error_response(404, "not_found", f"No service with id {service_id}.")
    except ForecastRefused as refused:
        return _invalid(refused.fields).response()
