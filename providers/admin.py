"""The operator's catalogue admin: services with their memberships, providers, cursors.

Every write goes through the engine's lock order (providers/services.py): a service's pool
cursor first, then providers by pk. Quota is never restored here; only the payment webhook
does that (SPEC §5).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import display_for_value
from django.db import connection, transaction
from django.db.models import Count, Q, QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest

from providers.models import Membership, PoolCursor, Provider, Service
from providers.services import (
    lock_cursors,
    memberships_changed,
    pause_provider,
    resume_provider,
    update_provider,
)
from providers.validation import MembershipSpec, membership_errors, validate_membership

Key = tuple[object, ...]


def _keys(spec: MembershipSpec) -> list[Key]:
    """What a membership row holds uniquely within its service."""
    return [("provider", spec.provider_id), ("position", spec.role, spec.position)]


def _lock_if_saving(service_ids: set[int]) -> None:
    """Take the services' allocation locks when validating inside the admin's save transaction.

    The admin validates and saves in one transaction: locking before validation means the
    rows we check are the rows we write over, even with another operator saving the same
    service at the same time.
    """
    if service_ids and connection.in_atomic_block:
        lock_cursors(service_ids)


class MembershipInlineFormSet(BaseInlineFormSet):
    """Checks the service's whole membership set against SPEC §1 before anything is saved."""

    def clean(self) -> None:
        service: Service = self.instance
        current: dict[object, MembershipSpec] = {}
        if service.pk is not None:
            _lock_if_saving({service.pk})
            rows = Membership.objects.filter(service_id=service.pk).select_related("provider")
            current = {m.pk: MembershipSpec.of(m) for m in rows}

        # The rows in Django's save order (existing rows in form order, then new ones), each
        # with what the save does to it: ("delete", None) or ("save", spec).
        steps: list[tuple[object, str, MembershipSpec | None]] = []
        for index, form in enumerate(self.forms):
            if form.errors:
                continue  # the formset is invalid anyway; the form shows its own errors
            data = form.cleaned_data
            existing = index < self.initial_form_count() and form.instance.pk in current
            row = form.instance.pk if existing else ("new", index)
            if data.get("DELETE"):
                if existing:
                    steps.append((row, "delete", None))
                continue
            if not form.has_changed() or not data.get("provider"):
                continue
            provider = data["provider"]
            spec = MembershipSpec(provider.pk, data["role"], data["position"], provider.name)
            steps.append((row, "save", spec))

        final = dict(current)
        for row, action, spec in steps:
            if action == "delete":
                final.pop(row, None)
            else:
                final[row] = spec
        errors = membership_errors(final.values())
        if errors:
            raise forms.ValidationError(errors)
        self._check_save_order(current, steps)
        super().clean()

    @staticmethod
    def _check_save_order(
        current: dict[object, MembershipSpec],
        steps: list[tuple[object, str, MembershipSpec | None]],
    ) -> None:
        """Reject a valid end state that cannot be reached one row at a time (a swap).

        The database checks uniqueness after every row, so two rows cannot trade a position or
        a provider in one save: it would fail half-way with an IntegrityError.
        """
        state = dict(current)
        held = {key: row for row, spec in state.items() for key in _keys(spec)}
        for row, action, spec in steps:
            old = state.pop(row, None)
            if old is not None:
                for key in _keys(old):
                    held.pop(key, None)
            if action == "delete" or spec is None:
                continue
            for key in _keys(spec):
                holder = held.get(key)
                if holder is not None:
                    other = state[holder]
                    what = (
                        f"{spec.label}"
                        if key[0] == "provider"
                        else f"{spec.role} position {spec.position}"
                    )
                    raise forms.ValidationError(
                        f"{other.label} still holds {what} when the row of {spec.label} is "
                        "saved: rows are saved one at a time, so a swap needs two saves. First "
                        "move one of them to a free position (or remove it) and save, then "
                        "finish the change."
                    )
            state[row] = spec
            held.update(dict.fromkeys(_keys(spec), row))


class MembershipInline(admin.TabularInline):
    model = Membership
    formset = MembershipInlineFormSet
    fields = ["provider", "role", "position", "eligible"]
    readonly_fields = ["eligible"]
    autocomplete_fields = ["provider"]
    ordering = ["role", "position"]
    extra = 1

    @admin.display(description="Eligible")
    def eligible(self, obj: Membership) -> str | None:
        """A saved row's tick or cross; nothing on the blank row for a new membership, whose
        field default would otherwise show a green tick for no provider at all."""
        if obj.pk is None:
            return None
        return display_for_value(obj.provider_eligible, "", boolean=True)


@admin.register(Service)
class ServiceAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "slug", "active", "mandatory_count", "pool_count", "cursor"]
    list_display_links = ["id", "name"]
    list_filter = ["active"]
    search_fields = ["name", "slug"]
    inlines = [MembershipInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Service]:
        return (
            super()
            .get_queryset(request)
            .select_related("cursor")
            .annotate(
                mandatory_total=Count(
                    "memberships", filter=Q(memberships__role=Membership.Role.MANDATORY)
                ),
                pool_total=Count("memberships", filter=Q(memberships__role=Membership.Role.POOL)),
            )
        )

    @admin.display(description="mandatory", ordering="mandatory_total")
    def mandatory_count(self, obj: Service) -> int:
        return obj.mandatory_total

    @admin.display(description="pool", ordering="pool_total")
    def pool_count(self, obj: Service) -> int:
        return obj.pool_total

    @admin.display(description="cursor position")
    def cursor(self, obj: Service) -> str:
        cursor = getattr(obj, "cursor", None)
        if cursor is None or cursor.position is None:
            return "—"
        return str(cursor.position)

    def save_model(self, request: HttpRequest, obj: Service, form: Any, change: bool) -> None:
        if change:
            # The cursor row is the service's allocation lock: no lead of this service is
            # allocated half on the old memberships and half on the new.
            lock_cursors([obj.pk])
        super().save_model(request, obj, form, change)
        if not change:
            lock_cursors([obj.pk])  # creates the new service's cursor

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        if any(formset.has_changed() for formset in formsets):
            memberships_changed(form.instance)


class MembershipAdminForm(forms.ModelForm):
    class Meta:
        model = Membership
        fields = ["service", "provider", "role", "position"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        service, provider = cleaned.get("service"), cleaned.get("provider")
        role, position = cleaned.get("role"), cleaned.get("position")
        if service is None or provider is None or not role or position is None:
            return cleaned
        _lock_if_saving({service.pk} | ({self.instance.service_id} if self.instance.pk else set()))
        candidate = Membership(
            pk=self.instance.pk, service=service, provider=provider, role=role, position=position
        )
        validate_membership(candidate)
        return cleaned


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    form = MembershipAdminForm
    list_display = ["id", "service", "provider", "role", "position", "provider_eligible"]
    list_filter = ["service", "role", "provider_eligible"]
    search_fields = ["provider__name", "service__name", "service__slug"]
    list_select_related = ["service", "provider"]
    autocomplete_fields = ["service", "provider"]
    readonly_fields = ["provider_eligible"]
    ordering = ["service_id", "role", "position"]

    def _services_touched(self, memberships: QuerySet[Membership]) -> list[int]:
        return sorted(set(memberships.values_list("service_id", flat=True)))

    def _announce(self, service_ids: list[int]) -> None:
        for service in Service.objects.filter(pk__in=service_ids):
            memberships_changed(service)

    def save_model(self, request: HttpRequest, obj: Membership, form: Any, change: bool) -> None:
        service_ids = {obj.service_id}
        if change:
            service_ids |= set(self._services_touched(Membership.objects.filter(pk=obj.pk)))
        with transaction.atomic():
            lock_cursors(service_ids)
            super().save_model(request, obj, form, change)
            self._announce(sorted(service_ids))

    def delete_model(self, request: HttpRequest, obj: Membership) -> None:
        with transaction.atomic():
            lock_cursors([obj.service_id])
            super().delete_model(request, obj)
            # Removing an exhausted mandatory provider can let waiting leads through.
            self._announce([obj.service_id])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        with transaction.atomic():
            service_ids = self._services_touched(queryset)
            lock_cursors(service_ids)
            super().delete_queryset(request, queryset)
            self._announce(service_ids)


class QuotaLeftFilter(admin.SimpleListFilter):
    title = "quota left"
    parameter_name = "quota_left"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Has quota left"), ("no", "Exhausted")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Provider]) -> QuerySet[Provider]:
        if self.value() == "yes":
            return queryset.filter(remaining_quota__gt=0)
        if self.value() == "no":
            return queryset.filter(remaining_quota=0)
        return queryset


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    """Name, quota and status are editable; the quota left and the counters belong to the engine.

    There is deliberately no way to restore quota here: only the payment webhook does that.
    """

    EDITABLE = ["name", "quota", "status"]
    ENGINE_OWNED = ["remaining_quota", "cycle", "leads_this_cycle", "leads_total", "created_at"]

    list_display = [
        "id",
        "name",
        "status",
        "quota",
        "remaining_quota",
        "cycle",
        "leads_this_cycle",
        "leads_total",
    ]
    list_display_links = ["id", "name"]
    list_filter = ["status", QuotaLeftFilter, "memberships__service"]
    search_fields = ["name"]
    readonly_fields = ENGINE_OWNED
    actions = ["pause_selected", "resume_selected"]

    def get_fields(self, request: HttpRequest, obj: Provider | None = None) -> list[str]:
        return self.EDITABLE + (self.ENGINE_OWNED if obj is not None else [])

    def save_model(self, request: HttpRequest, obj: Provider, form: Any, change: bool) -> None:
        if not change:
            # A new provider starts its first cycle with its whole quota.
            obj.remaining_quota = obj.quota
            obj.save()
            return
        saved = update_provider(
            obj,
            name=form.cleaned_data["name"],
            quota=form.cleaned_data["quota"],
            status=form.cleaned_data["status"],
        )
        for field in ["name", "quota", "status", *self.ENGINE_OWNED]:
            setattr(obj, field, getattr(saved, field))

    @admin.action(description="Pause selected providers")
    def pause_selected(self, request: HttpRequest, queryset: QuerySet[Provider]) -> None:
        providers = list(queryset.order_by("pk"))
        for provider in providers:
            pause_provider(provider)
        self.message_user(request, f"Paused {len(providers)} provider(s).", messages.SUCCESS)

    @admin.action(description="Resume selected providers")
    def resume_selected(self, request: HttpRequest, queryset: QuerySet[Provider]) -> None:
        providers = list(queryset.order_by("pk"))
        for provider in providers:
            # Each resume commits on its own and drains the waiting leads it can serve.
            resume_provider(provider)
        self.message_user(
            request,
            f"Resumed {len(providers)} provider(s); waiting leads were offered to them.",
            messages.SUCCESS,
        )


@admin.register(PoolCursor)
class PoolCursorAdmin(admin.ModelAdmin):
    """Read-only: cursors move only with allocations."""

    list_display = ["service", "position", "next_pool_provider", "updated_at"]
    list_select_related = ["service"]
    fields = ["service", "position", "next_pool_provider", "updated_at"]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: PoolCursor | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: PoolCursor | None = None) -> bool:
        return False

    @admin.display(description="next pool provider")
    def next_pool_provider(self, obj: PoolCursor) -> str:
        """The first eligible pool provider after the cursor, walking cyclically."""
        eligible = (
            Membership.objects.pool()
            .filter(service_id=obj.service_id, provider_eligible=True)
            .select_related("provider")
            .order_by("position")
        )
        following = None
        if obj.position is not None:
            following = eligible.filter(position__gt=obj.position).first()
        following = following or eligible.first()
        return following.provider.name if following is not None else "—"
