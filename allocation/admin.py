"""The operator's view of leads and allocations (read-only) and the API keys of lead sources.

Leads come only through intake and are changed only by the engine, so their pages are
read-only. An API key's raw value is shown once, right after it is created; only its hash is
stored, and the hash is never displayed.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from allocation.models import Allocation, ApiKey, Lead
from allocation.services import create_api_key, revoke_api_keys
from providers.models import Provider


class ReadOnlyAdminMixin:
    """View permission only: the engine owns these rows."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class AllocationInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = Allocation
    fields = ["rank", "provider", "role", "cycle", "created_at"]
    readonly_fields = fields
    ordering = ["rank"]
    extra = 0


@admin.register(Lead)
class LeadAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "service",
        "status",
        "wait_reason",
        "source",
        "created_at",
        "allocated_at",
    ]
    list_filter = ["status", "service", "wait_reason"]
    search_fields = ["name", "phone", "city", "id__exact"]
    list_select_related = ["service"]
    show_full_result_count = False  # a count of millions of leads on every filtered page
    fields = [
        "service",
        "status",
        "wait_reason",
        "name",
        "phone",
        "city",
        "description",
        "source",
        "created_at",
        "allocated_at",
        "decision_trace",
    ]
    readonly_fields = fields
    inlines = [AllocationInline]

    @admin.display(description="decision trace")
    def decision_trace(self, obj: Lead) -> SafeString | str:
        entries = obj.trace or []
        if not entries:
            return "—"
        ids = {entry.get("provider_id") for entry in entries}
        names = dict(Provider.objects.filter(pk__in=ids).values_list("pk", "name"))
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    number,
                    names.get(entry.get("provider_id"), f"#{entry.get('provider_id')}"),
                    entry.get("role", ""),
                    entry.get("outcome", ""),
                    entry.get("reason", ""),
                )
                for number, entry in enumerate(entries, start=1)
            ),
        )
        return format_html(
            "<table><thead><tr><th>#</th><th>provider</th><th>role</th><th>outcome</th>"
            "<th>reason</th></tr></thead><tbody>{}</tbody></table>"
            "<details><summary>JSON</summary><pre>{}</pre></details>",
            rows,
            json.dumps(entries, indent=2),
        )


@admin.register(Allocation)
class AllocationAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "lead", "provider", "role", "rank", "cycle", "created_at"]
    list_filter = ["role", "provider", "lead__service"]
    search_fields = ["lead__id__exact", "provider__name"]
    list_select_related = ["lead", "provider"]
    show_full_result_count = False


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
