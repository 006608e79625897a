"""The portal's forms: sign-in, and the inputs of its JSON endpoints."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.models import AbstractBaseUser

from portal.models import ProviderUser
from providers.forms import RoutingForm
from providers.models import Provider
from returns.models import Return


class ProviderSignInForm(AuthenticationForm):
    """Django's sign-in form, for active, non-staff users tied to a provider only."""

    error_messages = AuthenticationForm.error_messages | {
        "not_provider": "This is not a provider account. Staff sign in at the admin.",
    }

    def confirm_login_allowed(self, user: AbstractBaseUser) -> None:
        super().confirm_login_allowed(user)
        if (
            user.is_staff
            or user.is_superuser
            or not ProviderUser.objects.filter(user=user).exists()
        ):
            raise forms.ValidationError(self.error_messages["not_provider"], code="not_provider")


class ReturnForm(forms.Form):
    """A return's reason and note (SPEC §9): ``other`` needs a note."""

    reason = forms.ChoiceField(choices=Return.Reason.choices)
    note = forms.CharField(max_length=1000, required=False)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if cleaned.get("reason") == Return.Reason.OTHER and not cleaned.get("note"):
            self.add_error("note", "Say why, when the reason is “other”.")
        return cleaned


def json_type_errors(data: dict[str, Any], *, strings: tuple[str, ...]) -> dict[str, list[str]]:
    """JSON values a form would coerce: a number is no reason, a list no note."""
    return {
        name: ["Must be a string."]
        for name in strings
        if data.get(name) is not None and not isinstance(data[name], str)
    }


class EndpointForm(forms.Form):
    """The provider's webhook URL (https; checked by delivery's SSRF guard) and email; empty
    removes one."""

    url = forms.CharField(label="Webhook URL", max_length=2000, required=False)
    email = forms.EmailField(label="Email", required=False)


class VersionForm(forms.Form):
    """The provider's version the page was rendered with (optimistic concurrency)."""

    seen_version = forms.IntegerField(min_value=1, required=False)


class PortalRoutingForm(RoutingForm):
    """The provider's own routing rules (the admin's fields and checks); cities are read-only
    while staff lock its areas."""

    seen_version = forms.IntegerField(min_value=1, required=False, widget=forms.HiddenInput)

    def __init__(self, *args: Any, provider: Provider, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.show_routing(provider)
        self.fields["seen_version"].initial = provider.version
        self.fields["cities_text"].disabled = provider.areas_locked
