"""The routing rules (SPEC §2a) as a form of text fields: the admin's provider page and the
portal's settings both use it, so they read, check and refuse the same input alike."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from providers.models import Provider
from providers.routing import (
    RoutingError,
    format_time_off,
    parse_cities,
    parse_date_range,
    time_off_from_json,
)
from providers.services import RoutingRules, clean_routing

# clean_routing's names -> this form's fields, for its messages.
ERROR_FIELDS = {
    "cities": "cities_text",
    "timezone": "timezone_name",
    "hours": "hours_text",
    "time_off": "time_off_text",
    "daily_cap": "daily_cap_value",
    "weekly_cap": "weekly_cap_value",
}


class RoutingForm(forms.Form):
    """Cities, timezone, hours, time off and caps as text; only the fields changed are given to
    clean_routing (so a rule someone else set meanwhile is not written back)."""

    cities_text = forms.CharField(
        label="Cities",
        required=False,
        help_text="Comma-separated; compared normalised and through the city aliases. "
        "Blank: everywhere.",
    )
    timezone_name = forms.CharField(
        label="Timezone", required=False, help_text="An IANA name; blank: the site's."
    )
    hours_text = forms.CharField(
        label="Hours",
        required=False,
        help_text="e.g. “mon-fri 08:00-18:00; sat 09:00-13:00”; blank: always open.",
    )
    time_off_text = forms.CharField(
        label="Time off",
        required=False,
        help_text="Inclusive local dates, comma-separated: 2026-12-24..2026-12-26, 2027-01-01.",
    )
    daily_cap_value = forms.IntegerField(label="Daily cap", required=False, min_value=0)
    weekly_cap_value = forms.IntegerField(
        label="Weekly cap", required=False, min_value=0, help_text="Per ISO week, local."
    )

    def show_routing(self, provider: Provider) -> None:
        """Start the fields from the provider's rules."""
        self.fields["cities_text"].initial = ", ".join(provider.cities or [])
        self.fields["timezone_name"].initial = provider.timezone
        self.fields["hours_text"].initial = provider.hours
        self.fields["time_off_text"].initial = format_time_off(
            time_off_from_json(provider.time_off)
        )
        self.fields["daily_cap_value"].initial = provider.daily_cap
        self.fields["weekly_cap_value"].initial = provider.weekly_cap

    def routing_changes(self) -> dict[str, Any]:
        """clean_routing's arguments for the fields changed."""
        data = self.cleaned_data
        changed = set(self.changed_data) & set(data)  # a field that failed is not in data
        changes: dict[str, Any] = {}
        if "cities_text" in changed:
            changes["cities"] = parse_cities(data["cities_text"])
        if "timezone_name" in changed:
            changes["tz"] = data["timezone_name"]
        if "hours_text" in changed:
            changes["hours"] = data["hours_text"]
        if "time_off_text" in changed:
            texts = [t for t in data["time_off_text"].split(",") if t.strip()]
            try:
                changes["time_off"] = [parse_date_range(t) for t in texts]
            except RoutingError as exc:
                self.add_error("time_off_text", str(exc))
        if "daily_cap_value" in changed:
            changes["daily_cap"] = data["daily_cap_value"]
        if "weekly_cap_value" in changed:
            changes["weekly_cap"] = data["weekly_cap_value"]
        return changes

    def add_routing_errors(self, error: ValidationError, fields: dict[str, str]) -> None:
        """clean_routing's or set_routing's messages, on this form's fields."""
        for name, messages_ in error.message_dict.items():
            for message in messages_:
                self.add_error(fields.get(name), message)

    def clean_routing_rules(
        self, provider: Provider, *, extra: dict[str, Any] | None = None
    ) -> RoutingRules | None:
        """The provider's rules with the changes (and ``extra`` arguments), or None when
        nothing changed or something is wrong (the form then has the errors)."""
        changes = self.routing_changes() | (extra or {})
        if not changes:
            return None
        try:
            rules = clean_routing(provider, **changes)
        except ValidationError as exc:
            self.add_routing_errors(exc, ERROR_FIELDS)
            return None
        return None if self.errors else rules
