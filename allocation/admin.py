"""The operator's view of leads and allocations (read-only).

Leads come only through intake and are changed only by the engine, so their pages are
read-only.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from allocation.models import Allocation, Lead
from allocation.services import add_city_alias, change_city_alias, remove_city_alias
from providers.models import CityAlias, Provider
from providers.routing import normalise_city


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


class CityAliasForm(forms.ModelForm):
    class Meta:
        model = CityAlias
        fields = ["alias", "city"]
        help_texts = {
            "alias": "Another name of the city, e.g. Bangalore. Applied at once; deleting the "
            "alias splits the names again (providers serve the names they listed, waiting "
            "leads keep the city they were submitted with), and changing it moves them.",
            "city": "The name providers and leads are compared by, e.g. Bengaluru.",
        }

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        # The checks the service makes, shown on the form: it runs them again under its locks.
        alias = normalise_city(cleaned.get("alias") or "")
        city = normalise_city(cleaned.get("city") or "")
        if alias and alias == city:
            raise ValidationError({"alias": "A city is not an alias of itself."})
        others = CityAlias.objects.exclude(pk=self.instance.pk)
        if alias and others.filter(alias=alias).exists():
            raise ValidationError({"alias": f"“{alias}” is an alias already."})
        if alias and others.filter(city=alias).exists():
            raise ValidationError({"alias": f"“{alias}” is the canonical name of other aliases."})
        return cleaned


@admin.register(CityAlias)
class CityAliasAdmin(admin.ModelAdmin):
    """Staff declare which city names are the same city (SPEC §2a).

    Saving an alias applies it at once (allocation.services.add_city_alias): providers listing
    the alias serve the canonical city, and leads waiting under it join that city's queue.
    Deleting one undoes it (remove_city_alias): providers that listed the alias serve it again
    under its own name, and each waiting lead is keyed again by the city it was submitted with.
    Changing one is both, in one transaction (change_city_alias). Either way under every
    service's cursor lock, and waiting leads are drained after the commit.
    """

    form = CityAliasForm
    list_display = ["alias", "city"]
    search_fields = ["alias", "city"]

    def save_model(self, request: HttpRequest, obj: CityAlias, form: Any, change: bool) -> None:
        if change:
            saved = change_city_alias(form.initial["alias"], obj.alias, obj.city)
        else:
            saved = add_city_alias(obj.alias, obj.city)
        obj.pk, obj.alias, obj.city = saved.pk, saved.alias, saved.city

    def delete_model(self, request: HttpRequest, obj: CityAlias) -> None:
        remove_city_alias(obj.alias)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[CityAlias]) -> None:
        for alias in queryset.order_by("pk").values_list("alias", flat=True):
            remove_city_alias(alias)
