"""Provider accounts in the admin: staff create them (with a one-time set-password link) and
deactivate them. Who did what in the portal is in each provider's history (its admin page's
"History"), written by portal/services.py with the account as the acting user."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from portal.models import ProviderUser
from portal.services import create_provider_user, set_provider_user_active


class ProviderUserCreationForm(forms.ModelForm):
    username = forms.CharField(max_length=150)
    email = forms.EmailField(required=False)

    class Meta:
        model = ProviderUser
        fields = ["provider"]

    def clean_username(self) -> str:
        User = get_user_model()
        username = User.normalize_username(self.cleaned_data["username"])
        User.username_validator(username)  # the rule create_provider_user applies
        if User.objects.filter(username=username).exists():
            raise ValidationError("A user with that username already exists.")
        return username


@admin.register(ProviderUser)
class ProviderUserAdmin(admin.ModelAdmin):
    list_display = ["username", "provider", "email", "active", "last_login", "created_at"]
    list_filter = ["user__is_active", "provider"]
    list_select_related = ["user", "provider"]
    search_fields = ["user__username", "user__email", "provider__name"]
    actions = ["deactivate_selected", "reactivate_selected"]

    def get_form(self, request: HttpRequest, obj: ProviderUser | None = None, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = ProviderUserCreationForm
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request: HttpRequest, obj: ProviderUser | None = None) -> list[str]:
        if obj is None:
            return ["provider", "username", "email"]
        return ["provider", "username", "email", "active", "last_login", "created_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: ProviderUser | None = None) -> list:
        if obj is None:
            return []
        return ["provider", "username", "email", "active", "last_login", "created_at"]

    @admin.display(ordering="user__username")
    def username(self, account: ProviderUser) -> str:
        return account.user.get_username()

    @admin.display()
    def email(self, account: ProviderUser) -> str:
        return account.user.email

    @admin.display(boolean=True, ordering="user__is_active")
    def active(self, account: ProviderUser) -> bool:
        return account.user.is_active

    @admin.display()
    def last_login(self, account: ProviderUser) -> Any:
        return account.user.last_login

    def save_model(self, request: HttpRequest, obj: ProviderUser, form: Any, change: bool) -> None:
        if change:
            return  # nothing on an existing account is edited here but through the actions
        created = create_provider_user(
            form.cleaned_data["provider"],
            username=form.cleaned_data["username"],
            email=form.cleaned_data.get("email", ""),
        )
        obj.pk, obj.user, obj.created_at = (
            created.account.pk,
            created.account.user,
            created.account.created_at,
        )
        obj._state.adding = False
        link = request.build_absolute_uri(created.set_password_path)
        messages.warning(
            request,
            f"Send this one-time link to {obj.user.get_username()} so that they set their "
            f"password (valid 72 h, shown once): {link}",
        )

    def has_delete_permission(self, request: HttpRequest, obj: ProviderUser | None = None) -> bool:
        return False  # deactivate instead: the history keeps naming who did what

    @admin.action(description="Deactivate selected provider users")
    def deactivate_selected(self, request: HttpRequest, queryset: QuerySet[ProviderUser]) -> None:
        for account in queryset.select_related("user"):
            set_provider_user_active(account, active=False)
        self.message_user(request, f"Deactivated {queryset.count()} provider user(s).")

    @admin.action(description="Reactivate selected provider users")
    def reactivate_selected(self, request: HttpRequest, queryset: QuerySet[ProviderUser]) -> None:
        for account in queryset.select_related("user"):
            set_provider_user_active(account, active=True)
        self.message_user(request, f"Reactivated {queryset.count()} provider user(s).")
