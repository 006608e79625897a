"""The operator's view of leads and allocations (read-only).

Leads come only through intake and are changed only by the engine, so their pages are
read-only.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from allocation.models import Allocation, Lead
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
