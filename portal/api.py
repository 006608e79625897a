"""The portal's JSON for scripts (SPEC §9), on the portal's session: GET /portal/api/leads,
/portal/api/leads/{id}, /portal/api/provider, POST /portal/api/leads/{id}/return, and
self-service: POST /portal/api/pause and /resume, GET and PUT /portal/api/endpoint,
POST /portal/api/endpoint/rotate-secret, GET and PUT /portal/api/routing.

Every answer reads or writes the signed-in account's provider only: another provider's lead
is exactly as unknown as a lead that does not exist (404). Errors have SPEC §3's shape.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse

from allocation.services import Busy
from leaddist.http.db import MAX_BIGINT
from leaddist.http.errors import Rejected, busy_response, error_response
from leaddist.http.json_body import parse_json_body
from portal.access import provider_api
from portal.delivery import UnsafeTarget, endpoint_of
from portal.forms import EndpointForm, ReturnForm, json_type_errors
from portal.selectors import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    provider_allocation,
    provider_lead,
    provider_leads,
    provider_routing_answer,
    provider_summary,
)
from portal.services import set_provider_endpoint, set_provider_paused, set_provider_routing
from providers.models import Provider
from providers.routing import RoutingError, parse_date_range
from providers.services import EditConflict, clean_routing
from returns.models import Return
from returns.services import AlreadyReturned, OutsideWindow, return_lead


def _not_found(lead_id: int) -> JsonResponse:
    return error_response(404, "not_found", f"You have no lead with id {lead_id}.")


def _invalid(fields: dict[str, list[str]]) -> Rejected:
    return Rejected(422, "invalid_request", "The request is invalid.", fields=fields)


def _whole_number(request: HttpRequest, name: str, default: int, maximum: int) -> int:
    value = request.GET.get(name)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or int(value) > maximum:
        raise _invalid({name: [f"A whole number from 0 to {maximum}."]})
    return int(value)


@provider_api("GET")
def leads(request: HttpRequest) -> HttpResponse:
    """This provider's leads, newest first: ?q= (name or phone), ?limit= (1-100), ?offset=."""
    try:
        unknown = sorted(set(request.GET) - {"q", "limit", "offset"})
        if unknown:
            raise _invalid({name: ["Unknown query parameter."] for name in unknown})
        limit = _whole_number(request, "limit", DEFAULT_LIMIT, MAX_LIMIT)
        if limit < 1:
            raise _invalid({"limit": [f"A whole number from 1 to {MAX_LIMIT}."]})
        offset = _whole_number(request, "offset", 0, 10**9)
    except Rejected as rejected:
        return rejected.response()
    items, count = provider_leads(
        request.account.provider, query=request.GET.get("q", "")[:120], limit=limit, offset=offset
    )
    return JsonResponse({"items": items, "count": count})


@provider_api("GET")
def lead(request: HttpRequest, lead_id: int) -> HttpResponse:
    """One of this provider's leads; any other id is 404."""
    found = provider_lead(request.account.provider, lead_id) if lead_id <= MAX_BIGINT else None
    if found is None:
        return _not_found(lead_id)
    return JsonResponse(found)


@provider_api("GET")
def provider(request: HttpRequest) -> HttpResponse:
    """This provider's quota, cycle, counts today and this week, and return rate."""
    return JsonResponse(provider_summary(request.account.provider.pk).as_json())


def _return_input(request: HttpRequest) -> ReturnForm:
    data: Any = parse_json_body(request)
    if not isinstance(data, dict):
        raise _invalid({"request": ["The body must be a JSON object."]})
    unknown = sorted(set(data) - {"reason", "note"})
    errors = {name: ["Unknown field."] for name in unknown}
    errors |= json_type_errors(data, strings=("reason", "note"))
    if errors:
        raise _invalid(errors)
    form = ReturnForm({"reason": data.get("reason") or "", "note": data.get("note") or ""})
    if not form.is_valid():
        raise _invalid({name: list(messages) for name, messages in form.errors.items()})
    return form


def return_answer(ret: Return) -> dict[str, Any]:
    return {
        "id": ret.pk,
        "lead_id": ret.lead_id,
        "reason": ret.reason,
        "note": ret.note,
        "status": ret.status,
        "credited": ret.credited,
        "created_at": ret.created_at,
        "decided_at": ret.decided_at,
    }


@provider_api("POST")
def return_one(request: HttpRequest, lead_id: int) -> HttpResponse:
    """Return one of this provider's leads: 201 {"id", "status", ...}; 409 if returned before;
    422 past the return window."""
    allocation = (
        provider_allocation(request.account.provider, lead_id) if lead_id <= MAX_BIGINT else None
    )
    if allocation is None:
        return _not_found(lead_id)
    try:
        form = _return_input(request)
        ret = return_lead(
            allocation,
            reason=form.cleaned_data["reason"],
            note=form.cleaned_data["note"],
            who=request.account.actor,
        )
    except Rejected as rejected:
        return rejected.response()
    except AlreadyReturned as exc:
        return error_response(409, "already_returned", str(exc), return_id=exc.existing.pk)
    except OutsideWindow as exc:
        return error_response(422, "return_window_closed", str(exc))
    except Busy:
        return busy_response("Too busy to record the return right now; retry in a moment.")
    return JsonResponse(return_answer(ret), status=201)


def _endpoint_answer(provider: Provider, new_secret: str | None = None) -> dict[str, Any]:
    shown = endpoint_of(provider)
    return {
        "url": shown.url,
        "email": shown.email,
        "has_secret": shown.has_secret,
        "new_secret": new_secret,
    }


def _set_paused(request: HttpRequest, *, paused: bool) -> HttpResponse:
    provider = set_provider_paused(request.account, paused=paused)
    return JsonResponse({"status": provider.status})


@provider_api("POST")
def pause(request: HttpRequest) -> HttpResponse:
    """Pause this provider: no new leads until it resumes (its quota is kept)."""
    return _set_paused(request, paused=True)


@provider_api("POST")
def resume(request: HttpRequest) -> HttpResponse:
    """Resume this provider; waiting leads of its services are drained."""
    return _set_paused(request, paused=False)


@provider_api("GET", "PUT")
def endpoint(request: HttpRequest) -> HttpResponse:
    """GET: the webhook URL and email (never the secret). PUT {"url", "email"} sets them ("" or
    null removes one); a first URL gets a secret, returned once as "new_secret"."""
    provider = request.account.provider
    if request.method == "GET":
        return JsonResponse(_endpoint_answer(provider))
    try:
        data: Any = parse_json_body(request)
        if not isinstance(data, dict):
            raise _invalid({"request": ["The body must be a JSON object."]})
        errors = {name: ["Unknown field."] for name in sorted(set(data) - {"url", "email"})}
        errors |= json_type_errors(data, strings=("url", "email"))
        if errors:
            raise _invalid(errors)
        form = EndpointForm({"url": data.get("url") or "", "email": data.get("email") or ""})
        if not form.is_valid():
            raise _invalid({name: list(messages) for name, messages in form.errors.items()})
        new_secret = set_provider_endpoint(
            request.account, url=form.cleaned_data["url"], email=form.cleaned_data["email"]
        )
    except Rejected as rejected:
        return rejected.response()
    except UnsafeTarget as exc:
        return _invalid({"url": [str(exc)]}).response()
    except ValidationError as exc:
        return _invalid({"request": exc.messages}).response()
    response = JsonResponse(_endpoint_answer(provider, new_secret))
    response["Cache-Control"] = "no-store"
    return response


@provider_api("POST")
def rotate_secret(request: HttpRequest) -> HttpResponse:
    """A new webhook signing secret, returned once; the old one stops at once."""
    provider = request.account.provider
    if not endpoint_of(provider).has_secret:
        return error_response(
            409, "no_webhook", "Set a webhook URL first: only webhooks are signed."
        )
    new_secret = set_provider_endpoint(request.account, url=None, email=None, rotate_secret=True)
    response = JsonResponse(_endpoint_answer(provider, new_secret))
    response["Cache-Control"] = "no-store"
    return response


ROUTING_FIELDS = ("cities", "timezone", "hours", "time_off", "daily_cap", "weekly_cap")


def _routing_changes(data: dict[str, Any]) -> dict[str, Any]:
    """clean_routing's arguments from a JSON body; Rejected (422 by field) for wrong types."""
    errors = {name: ["Unknown field."] for name in sorted(set(data) - {*ROUTING_FIELDS, "version"})}
    errors |= json_type_errors(data, strings=("timezone", "hours"))
    changes: dict[str, Any] = {}
    for name in ("timezone", "hours"):
        if name in data and name not in errors:
            changes["tz" if name == "timezone" else name] = data[name] or ""
    if "cities" in data:
        cities = data["cities"]
        if not isinstance(cities, list) or not all(isinstance(c, str) for c in cities):
            errors["cities"] = ["A list of city names; [] for everywhere."]
        else:
            changes["cities"] = cities
    if "time_off" in data:
        ranges = data["time_off"]
        shape = "A list of [first, last] pairs of dates, YYYY-MM-DD; [] for none."
        if not isinstance(ranges, list) or not all(
            isinstance(r, list) and len(r) == 2 and all(isinstance(d, str) for d in r)
            for r in ranges
        ):
            errors["time_off"] = [shape]
        else:
            try:
                changes["time_off"] = [parse_date_range(f"{a}..{b}") for a, b in ranges]
            except RoutingError as exc:
                errors["time_off"] = [str(exc)]
    for name in ("daily_cap", "weekly_cap"):
        if name in data:
            changes[name] = data[name]  # clean_routing refuses what is not a whole number
    version = data.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        errors["version"] = ["The provider's version you read, a whole number."]
    if errors:
        raise _invalid(errors)
    return changes


@provider_api("GET", "PUT")
def routing(request: HttpRequest) -> HttpResponse:
    """GET: the routing rules, the counts against the caps, and what staff let this provider
    set. PUT {"cities", "timezone", "hours", "time_off", "daily_cap", "weekly_cap", "version"}:
    only the fields given change; with "version", refused (409) if the provider changed since."""
    account = request.account
    if request.method == "PUT":
        try:
            data: Any = parse_json_body(request)
            if not isinstance(data, dict):
                raise _invalid({"request": ["The body must be a JSON object."]})
            rules = clean_routing(account.provider, **_routing_changes(data))
            account.provider = set_provider_routing(
                account, rules, seen_version=data.get("version")
            )
        except Rejected as rejected:
            return rejected.response()
        except EditConflict as exc:
            return error_response(409, "edit_conflict", " ".join(exc.messages))
        except ValidationError as exc:
            return _invalid(exc.message_dict).response()
    return JsonResponse(provider_routing_answer(account.provider))


@provider_api("GET", "POST", "PUT", "PATCH", "DELETE")
def unknown_route(request: HttpRequest, rest: str) -> HttpResponse:
    return error_response(404, "not_found", "No such route or object.")
