"""The portal's forms: sign-in, and the inputs of its JSON endpoints."""

from __future__ import annotations

from django import forms
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.models import AbstractBaseUser

from portal.models import ProviderUser


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
