"""ProcessedEvent in the admin, read-only: the rows are written by the webhook alone."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from webhooks.models import ProcessedEvent


@admin.register(ProcessedEvent)
class ProcessedEventAdmin(admin.ModelAdmin):
    list_display = ("event_id", "received_at", "scope", "providers_reset", "leads_allocated")
    search_fields = ("event_id",)
    date_hierarchy = "received_at"
    readonly_fields = (
        "event_id",
        "body_sha256",
        "received_at",
        "provider_ids",
        "providers_reset",
        "leads_allocated",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
