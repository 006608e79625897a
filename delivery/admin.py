"""Deliveries for the operator (list, filters, resend), and each provider's delivery endpoint
on the provider's own page.

The provider page belongs to the catalogue (providers/admin.py), which imports no other app;
this module re-registers it with the endpoint's fields, as Django's own UserAdmin is extended.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from delivery.endpoints import set_endpoint, validate_webhook_url
from delivery.guard import UnsafeTarget
from delivery.models import Attempt, Delivery, Endpoint
from delivery.resend import resend_deliveries
from providers.admin import ProviderAdmin, ProviderAdminForm
from providers.models import Provider

DELIVERY_FIELDS = ["webhook_url", "delivery_email", "rotate_secret"]


class ProviderDeliveryForm(ProviderAdminForm):
    """The provider's form (with its version check) and its delivery endpoint. The endpoint's
    fields are optional and start from the stored endpoint, so a post that leaves them out (or
    unchanged) changes nothing."""

    webhook_url = forms.URLField(
        label="webhook URL",
        required=False,
        max_length=2000,
        assume_scheme="https",
        help_text="https only; every lead is POSTed to it, signed (docs/DELIVERY.md). Empty: "
        "no webhook.",
    )
    delivery_email = forms.EmailField(
        label="delivery email", required=False, help_text="Every lead is emailed here too."
    )
    rotate_secret = forms.BooleanField(
        required=False,
        help_text="Replace the webhook signing secret; the new one is shown once, after saving.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        stored = Endpoint.objects.filter(provider_id=self.instance.pk).first()
        if stored is not None:
            self.fields["webhook_url"].initial = stored.url
            self.fields["delivery_email"].initial = stored.email

    def clean_webhook_url(self) -> str:
        url = self.cleaned_data.get("webhook_url") or ""
        if url and "webhook_url" in self.changed_data:
            try:
                validate_webhook_url(url)
            except UnsafeTarget as exc:
                raise forms.ValidationError(str(exc)) from exc
        return url

    def delivery_changed(self) -> bool:
        return any(name in self.changed_data for name in DELIVERY_FIELDS)


class ProviderWithEndpointAdmin(ProviderAdmin):
    form = ProviderDeliveryForm

    def get_fieldsets(self, request: HttpRequest, obj: Provider | None = None) -> list[Any]:
        """The catalogue's sections, then delivery's."""
        delivery = (
            "Delivery",
            {
                "fields": DELIVERY_FIELDS,
                "description": "Where this provider's leads are sent: a signed webhook "
                "(https), an email, or both. A new or rotated signing secret is shown once.",
            },
        )
        return [*super().get_fieldsets(request, obj), delivery]

    def save_model(self, request: HttpRequest, obj: Provider, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if not form.delivery_changed():
            return
        # Through the service: the secret is generated there and shown here, once.
        outcome = set_endpoint(
            obj,
            url=form.cleaned_data["webhook_url"],
            email=form.cleaned_data["delivery_email"],
            rotate_secret=form.cleaned_data["rotate_secret"],
            who=f"staff:{request.user.get_username()}",
        )
        if outcome.new_secret:
            self.message_user(
                request,
                f"Webhook signing secret of {obj} (shown once; give it to the provider): "
                f"{outcome.new_secret}",
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
