"""The API keys of lead sources. A key's raw value is shown once, right after it is
created; only its hash is stored, and the hash is never displayed."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from credentials.models import ApiKey
from credentials.services import create_api_key, revoke_api_keys


class RevokedFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "revoked"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("no", "Usable"), ("yes", "Revoked")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> QuerySet[ApiKey]:
        if self.value() in ("yes", "no"):
            return queryset.filter(revoked_at__isnull=self.value() == "no")
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "key_prefix",
        "rate_limit_shown",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    list_filter = [RevokedFilter]
    search_fields = ["name", "key_prefix"]
    readonly_fields = ["key_prefix", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke_selected"]

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        if obj is None:
            return ["name", "rate_limit"]
        return ["name", "rate_limit", *self.readonly_fields]

    @admin.display(description="rate limit")
    def rate_limit_shown(self, key: ApiKey) -> str:
        return key.rate_limit or f"default ({settings.RATE_LIMIT_PER_KEY})"

    def has_delete_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        # Keys are revoked, not deleted, so leads' sources keep meaning something.
        return False

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        key, raw = create_api_key(name=obj.name, rate_limit=obj.rate_limit)
        # The admin goes on with `obj` (history, redirect): make it the saved row.
        for field in ApiKey._meta.concrete_fields:
            setattr(obj, field.attname, getattr(key, field.attname))
        obj._state.adding = False
        obj._state.db = key._state.db
        self.message_user(
            request,
            format_html(
                "API key for “{}”: <code>{}</code> Copy it now: it is not stored and will "
                "not be shown again.",
                key.name,
                raw,
            ),
            messages.WARNING,
        )

    @admin.action(description="Revoke selected keys")
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = revoke_api_keys(queryset)
        self.message_user(request, f"Revoked {revoked} API key(s).", messages.SUCCESS)
