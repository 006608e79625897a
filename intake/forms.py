"""The lead form of SPEC §3, shared by the public HTML page and the JSON API."""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import MaxLengthValidator

from allocation.services import INACTIVE_SERVICE, LeadInput
from intake.phones import normalise_phone
from leaddist.http.db import MAX_BIGINT
from providers.models import Service
from providers.selectors import active_services

NAME_MAX = 120
CITY_MAX = 120
DESCRIPTION_MAX = 2000
SERVICE_MAX = 64  # the longest slug
ID_PATTERN = re.compile(r"[0-9]+")


def reject_unpaired_surrogates(value: str) -> None:
    """A lone surrogate (JSON "\\ud800") cannot be stored or even sent to PostgreSQL."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(
            "Text must not contain unpaired surrogates.", code="surrogate"
        ) from exc


def _text_field(**kwargs: Any) -> forms.CharField:
    # CharField strips whitespace and already refuses NUL characters.
    return forms.CharField(validators=[reject_unpaired_surrogates], **kwargs)


def _active_service_choices() -> list[tuple[str, str]]:
    # Called when the HTML form renders, never when the API validates.
    return [("", "Choose a service…")] + [
        (str(service.pk), service.name) for service in Service.objects.active()
    ]


class LeadForm(forms.Form):
    name = _text_field(max_length=NAME_MAX)
    phone = _text_field(
        max_length=64,
        help_text="7 to 15 digits; spaces, dashes, dots and parentheses are ignored.",
        widget=forms.TextInput(attrs={"type": "tel", "autocomplete": "tel"}),
    )
    city = _text_field(max_length=CITY_MAX)
    # Its length is checked by a validator, not max_length, which would put a maxlength
    # attribute on the <select>.
    service = forms.CharField(
        validators=[reject_unpaired_surrogates, MaxLengthValidator(SERVICE_MAX)],
        widget=forms.Select(choices=_active_service_choices),
    )
    description = _text_field(
        max_length=DESCRIPTION_MAX, required=False, widget=forms.Textarea(attrs={"rows": 4})
    )

    def clean_phone(self) -> str:
        phone = normalise_phone(self.cleaned_data["phone"])
        if phone is None:
            raise ValidationError(
                "Enter a phone number of 7 to 15 digits, optionally starting with +.",
                code="invalid_phone",
            )
        return phone

    def clean_service(self) -> Service:
        """An id if the value is all digits, a slug otherwise; only active services qualify."""
        value = self.cleaned_data["service"]
        if ID_PATTERN.fullmatch(value):
            lookup: dict[str, object] = {"pk": int(value)}
        else:
            lookup = {"slug": value}
        service = active_services.get(**lookup)
        if service is not None:
            return service
        if lookup.get("pk", 0) <= MAX_BIGINT and Service.objects.filter(**lookup).exists():
            raise ValidationError(INACTIVE_SERVICE, code="inactive_service")
        raise ValidationError("Unknown service.", code="unknown_service")

    def lead_input(self, *, source: str) -> LeadInput:
        """The validated lead, ready for allocation.services.submit_lead."""
        data = self.cleaned_data
        return LeadInput(
            service_id=data["service"].pk,
            name=data["name"],
            phone=data["phone"],
            city=data["city"],
            description=data["description"],
            source=source,
        )


class _SharedFields(dict):
    """Form fields that every instance shares: deep-copying them is what a Form does first."""

    def __deepcopy__(self, memo: dict[int, object]) -> _SharedFields:
        return self


class LeadData(LeadForm):
    """LeadForm for data that is validated and never rendered: the JSON API.

    A Form deep-copies its fields for every instance, so that rendering can change widgets per
    form; that copy was a tenth of the cost of taking a lead. Validation changes no field, so
    these instances share the class's fields. Same fields, same rules, same errors.
    """


# Set after the class statement: the form metaclass sets base_fields itself.
LeadData.base_fields = _SharedFields(LeadForm.base_fields)
