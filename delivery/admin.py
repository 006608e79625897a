"""Deliveries for the operator (list, filters, resend), and each provider's delivery endpoint
on the provider's own page.

The provider page belongs to the catalogue (providers/admin.py), which imports no other app;
this module re-registers it with the endpoint inline, as Django's own UserAdmin is extended.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from delivery.guard import UnsafeTarget
from delivery.models import Attempt, Delivery, Endpoint
from delivery.services import resend_deliveries, set_endpoint, validate_webhook_url
from providers.admin import ProviderAdmin
from providers.models import Provider


class EndpointForm(forms.ModelForm):
    url = forms.URLField(
        label="webhook URL",
        required=False,
        max_length=2000,
        assume_scheme="https",
        help_text="https only; every lead is POSTed to it, signed (docs/DELIVERY.md).",
    )
    rotate_secret = forms.BooleanField(
        required=False,
        help_text="Replace the signing secret; the new one is shown once, after saving.",
    )

    class Meta:
        model = Endpoint
        fields = ["url", "email"]

    def clean_url(self) -> str:
        url = self.cleaned_data.get("url") or ""
        if url:
            try:
                validate_webhook_url(url)
            except UnsafeTarget as exc:
                raise forms.ValidationError(str(exc)) from exc
        return url


class EndpointInline(admin.StackedInline):
    model = Endpoint
    form = EndpointForm
    fields = ["url", "email", "rotate_secret", "has_secret"]
    readonly_fields = ["has_secret"]
    can_delete = False
    extra = 1
    max_num = 1
    verbose_name = "delivery endpoint"

    @admin.display(description="signing secret", boolean=True)
    def has_secret(self, obj: Endpoint) -> bool:
        return bool(obj.secret)


class ProviderWithEndpointAdmin(ProviderAdmin):
    inlines = [*ProviderAdmin.inlines, EndpointInline]

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        if formset.model is not Endpoint:
            super().save_formset(request, form, formset, change)
            return
        # Through the service: the secret is generated there and shown here once.
        for endpoint_form in formset.forms:
            if not endpoint_form.has_changed() or not hasattr(endpoint_form, "cleaned_data"):
                continue
            data = endpoint_form.cleaned_data
            outcome = set_endpoint(
                form.instance,
                url=data.get("url") or "",
                email=data.get("email") or "",
                rotate_secret=bool(data.get("rotate_secret")),
            )
            if outcome.new_secret:
                self.message_user(
                    request,
                    f"Webhook signing secret of {form.instance} (shown once, give it to the "
                    f"provider): {outcome.new_secret}",
                    messages.WARNING,
                )


admin.site.unregister(Provider)
admin.site.register(Provider, ProviderWithEndpointAdmin)


class AttemptInline(admin.TabularInline):
    model = Attempt
    fields = ["number", "started_at", "succeeded", "status_code", "latency_ms", "error"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    """Read-only: deliveries change only through their attempts and the resend action."""

    list_display = [
        "id",
        "lead",
        "provider",
        "channel",
        "status",
        "attempts",
        "last_status_code",
        "last_latency_ms",
        "short_error",
        "next_attempt_at",
        "updated_at",
    ]
    list_filter = ["status", "channel", "provider"]
    list_select_related = ["lead", "provider"]
    search_fields = ["=id", "=lead__id"]
    readonly_fields = [f.name for f in Delivery._meta.fields]
    inlines = [AttemptInline]
    actions = ["resend_selected"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="last error")
    def short_error(self, obj: Delivery) -> str:
        return obj.last_error[:80]

    @admin.action(description="Resend selected deliveries (same delivery id)")
    def resend_selected(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        count = resend_deliveries(queryset)
        self.message_user(request, f"Resending {count} delivery(ies).", messages.SUCCESS)
