"""Returns in the admin: staff approve or reject pending ones (one at a time or in bulk); who
returned each lead (provider:<username>) and who decided (auto, staff:<username>) is shown."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from returns.models import Return
from returns.services import decide_returns


@admin.register(Return)
class ReturnAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "lead_shown",
        "provider",
        "reason",
        "status",
        "credited",
        "returned_by",
        "decided_by",
        "created_at",
    ]
    list_filter = ["status", "reason", "provider"]
    list_select_related = ["lead", "provider"]
    search_fields = ["=lead__id", "provider__name", "returned_by", "note"]
    actions = ["approve_selected", "reject_selected"]
    readonly_fields = [
        "lead",
        "provider",
        "allocation",
        "reason",
        "note",
        "status",
        "cycle",
        "decided_cycle",
        "credited",
        "returned_by",
        "decided_by",
        "created_at",
        "decided_at",
    ]

    @admin.display(description="lead", ordering="lead_id")
    def lead_shown(self, ret: Return) -> str:
        return f"#{ret.lead_id}"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # providers return leads from the portal

    def has_delete_permission(self, request: HttpRequest, obj: Return | None = None) -> bool:
        return False  # a decided return's credit stands; the record stays with the lead

    def _decide(self, request: HttpRequest, queryset: QuerySet[Return], *, approve: bool) -> None:
        who = f"staff:{request.user.get_username()}"
        decided, skipped = decide_returns(
            list(queryset.values_list("pk", flat=True)), approve=approve, who=who
        )
        verb = "Approved" if approve else "Rejected"
        self.message_user(request, f"{verb} {decided} return(s).")
        if skipped:
            self.message_user(
                request,
                f"{skipped} return(s) were decided already and left as they were.",
                messages.WARNING,
            )

    @admin.action(description="Approve selected returns (credit one unit of quota each)")
    def approve_selected(self, request: HttpRequest, queryset: QuerySet[Return]) -> None:
        self._decide(request, queryset, approve=True)

    @admin.action(description="Reject selected returns")
    def reject_selected(self, request: HttpRequest, queryset: QuerySet[Return]) -> None:
        self._decide(request, queryset, approve=False)
