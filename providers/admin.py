"""The operator's catalogue admin: services with their memberships, providers, cursors.

Every write goes through providers/services.py, which locks in the engine's order (a service's
pool cursor first, then providers by pk, then memberships). Quota is never restored here; only
the payment webhook does that (SPEC §5).

No silent overwrites: every change form carries, hidden, the version of the row it was opened
on (``seen_version``), and so does every membership row of a service's page. Validation locks
the rows (the admin validates and saves in one transaction) and refuses the save if someone
else edited them meanwhile, saying what differs. Only the fields the operator changed are
written: a form opened before a pause and saved after it cannot resume the provider.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import display_for_value
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, Q, QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest
from django.utils import timezone

from providers.forms import RoutingForm
from providers.locks import lock_cursors
from providers.models import Membership, PoolCursor, Provider, Service
from providers.selectors import describe_routing, next_pool_provider
from providers.services import (
    PROVIDER_FIELDS,
    SERVICE_FIELDS,
    STAFF_LIMITS,
    MembershipEdit,
    RoutingRules,
    check_memberships,
    check_provider_edit,
    check_service_edit,
    pause_provider,
    remove_memberships,
    resume_provider,
    routing_values,
    save_memberships,
    set_routing,
    update_provider,
    update_service,
)

# Form field -> membership column, for the fields an operator edits.
MEMBERSHIP_COLUMNS = {"provider": "provider_id", "role": "role", "position": "position"}
MISSING_VERSION = "This form does not say which version it was opened on; reload the page."


def _column_value(name: str, value: object) -> object:
    return value.pk if name == "provider" and value is not None else value


class VersionedForm(forms.ModelForm):
    """A form that carries, hidden, the version of the row it was opened on."""

    seen_version = forms.IntegerField(widget=forms.HiddenInput, required=False, min_value=1)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            self.fields["seen_version"].initial = self.instance.version

    def clean_seen_version(self) -> int | None:
        value = self.cleaned_data.get("seen_version")
        if self.instance.pk is not None and value is None:
            raise ValidationError(MISSING_VERSION)
        return value

    def changes(self, columns: dict[str, str]) -> dict[str, Any]:
        """The fields the operator changed, by column. Compared with the row as read on this
        request, which the version check proves is the row the form was opened on."""
        return {
            columns[name]: _column_value(name, self.cleaned_data[name])
            for name in self.changed_data
            if name in columns
        }


class MembershipInlineForm(VersionedForm):
    class Meta:
        model = Membership
        fields = ["provider", "role", "position"]

    def edit(self, *, existing: bool) -> MembershipEdit | None:
        """What saving this row does, or None (an untouched or empty row); removals are the
        formset's."""
        data = self.cleaned_data
        if existing:
            changes = self.changes(MEMBERSHIP_COLUMNS)
            if not changes:
                return None
            return MembershipEdit(self.instance.pk, changes, seen_version=data["seen_version"])
        if data.get("DELETE") or not self.has_changed() or not data.get("provider"):
            return None
        columns = {"provider_id": data["provider"].pk}
        return MembershipEdit(None, columns | {"role": data["role"], "position": data["position"]})


class MembershipInlineFormSet(BaseInlineFormSet):
    """Checks the service's memberships as providers.services.save_memberships will save them:
    under its locks, against each row's version and SPEC §1's rules, before anything is saved."""

    def edits(self) -> list[MembershipEdit]:
        """The rows' edits in form order; forms with errors are left out (the formset is
        invalid anyway, and they show their own errors)."""
        found = []
        for index, form in enumerate(self.forms):
            existing = index < self.initial_form_count() and form.instance.pk is not None
            if existing and self._should_delete_form(form):
                # Django deletes a row marked for deletion whatever its other fields say.
                seen = form.cleaned_data.get("seen_version")
                found.append(MembershipEdit(form.instance.pk, delete=True, seen_version=seen))
                continue
            if form.errors or not hasattr(form, "cleaned_data"):
                continue
            edit = form.edit(existing=existing)
            if edit is not None:
                found.append(edit)
        return found

    def clean(self) -> None:
        # A row removed by someone else fails its hidden id field ("Select a valid choice"):
        # say what happened instead.
        gone = [
            form.data.get(form.add_prefix("id"))
            for form in self.initial_forms
            if "id" in form.errors and not self._should_delete_form(form)
        ]
        if gone:
            raise ValidationError(
                [
                    f"Membership #{pk} was removed by someone else after you opened this page; "
                    "nothing was saved. Reload the page to see the current memberships."
                    for pk in gone
                ]
            )
        # Ours first: it names providers, where Django's duplicate check would not.
        check_memberships(self.instance, self.edits())
        super().clean()


class MembershipInline(admin.TabularInline):
    model = Membership
    form = MembershipInlineForm
    formset = MembershipInlineFormSet
    fields = ["provider", "role", "position", "eligible", "seen_version"]
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


class ServiceAdminForm(VersionedForm):
    class Meta:
        model = Service
        fields = ["slug", "name", "active"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.instance.pk is not None and cleaned.get("seen_version") is not None:
            yours = {name: cleaned[name] for name in SERVICE_FIELDS if name in cleaned}
            # Locks the cursor, then the service's row, until the admin's transaction ends.
            check_service_edit(self.instance, seen_version=cleaned["seen_version"], yours=yours)
        return cleaned


@admin.register(Service)
class ServiceAdmin(admin.ModelAdmin):
    form = ServiceAdminForm
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
            saved = update_service(
                obj,
                expected_version=form.cleaned_data["seen_version"],
                **form.changes({name: name for name in SERVICE_FIELDS}),
            )
            for name in [*SERVICE_FIELDS, "version"]:
                setattr(obj, name, getattr(saved, name))
            return
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            lock_cursors([obj.pk])  # creates the new service's cursor

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        if not isinstance(formset, MembershipInlineFormSet):
            super().save_formset(request, form, formset, change)
            return
        saved = save_memberships(form.instance, formset.edits())
        # What the admin's history entry lists.
        columns = {column: name for name, column in MEMBERSHIP_COLUMNS.items()}
        formset.new_objects = saved.created
        formset.changed_objects = [
            (row, [columns[column] for column in changed]) for row, changed in saved.changed
        ]
        formset.deleted_objects = saved.deleted


class MembershipAdminForm(VersionedForm):
    class Meta:
        model = Membership
        fields = ["service", "provider", "role", "position"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        self.edit: MembershipEdit | None = None
        if self.instance.pk is not None:
            if cleaned.get("seen_version") is None:
                return cleaned
            changes = self.changes(MEMBERSHIP_COLUMNS)
            if changes:
                self.edit = MembershipEdit(
                    self.instance.pk, changes, seen_version=cleaned["seen_version"]
                )
            service = self.instance.service
        else:
            service, provider = cleaned.get("service"), cleaned.get("provider")
            role, position = cleaned.get("role"), cleaned.get("position")
            if service is None or provider is None or not role or position is None:
                return cleaned
            self.edit = MembershipEdit(
                None, {"provider_id": provider.pk, "role": role, "position": position}
            )
        if self.edit is not None:
            check_memberships(service, [self.edit])
        return cleaned


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    """One membership at a time, through the same service as the service page's rows. A
    membership stays in its service: to move a provider, remove it there and add it here."""

    form = MembershipAdminForm
    list_display = ["id", "service", "provider", "role", "position", "provider_eligible"]
    list_filter = ["service", "role", "provider_eligible"]
    search_fields = ["provider__name", "service__name", "service__slug"]
    list_select_related = ["service", "provider"]
    autocomplete_fields = ["service", "provider"]
    ordering = ["service_id", "role", "position"]

    def get_fields(self, request: HttpRequest, obj: Membership | None = None) -> list[str]:
        return ["service", "provider", "role", "position", "provider_eligible", "seen_version"]

    def get_readonly_fields(self, request: HttpRequest, obj: Membership | None = None) -> list[str]:
        return ["provider_eligible"] + (["service"] if obj is not None else [])

    def save_model(self, request: HttpRequest, obj: Membership, form: Any, change: bool) -> None:
        if form.edit is None:
            return  # nothing changed
        saved = save_memberships(obj.service, [form.edit])
        for row in saved.created + [row for row, _ in saved.changed]:
            obj.pk, obj.version = row.pk, row.version
            obj._state.adding = False

    def delete_model(self, request: HttpRequest, obj: Membership) -> None:
        remove_memberships([obj.pk])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        remove_memberships(list(queryset.values_list("pk", flat=True)))


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


ROUTING_FORM_FIELDS = ["cities_text", "timezone_name", "hours_text", "time_off_text"]
ROUTING_FORM_FIELDS += ["daily_cap_value", "weekly_cap_value"]
LIMIT_FORM_FIELDS = ["areas_locked_value", "max_daily_cap_value", "max_weekly_cap_value"]


class ProviderAdminForm(VersionedForm, RoutingForm):
    """Name, quota, status, the routing rules of SPEC §2a and the limits on what the provider
    may set itself in the portal (SPEC §9), under one version check."""

    areas_locked_value = forms.BooleanField(
        label="Areas locked",
        required=False,
        help_text="The provider cannot change its cities in the portal.",
    )
    max_daily_cap_value = forms.IntegerField(
        label="Most daily cap",
        required=False,
        min_value=0,
        help_text="The highest daily cap the provider may set itself; blank: its quota.",
    )
    max_weekly_cap_value = forms.IntegerField(
        label="Most weekly cap",
        required=False,
        min_value=0,
        help_text="The highest weekly cap the provider may set itself; blank: its quota.",
    )

    class Meta:
        model = Provider
        fields = list(PROVIDER_FIELDS)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        p = self.instance
        self.show_routing(p)
        self.fields["areas_locked_value"].initial = p.areas_locked
        self.fields["max_daily_cap_value"].initial = p.max_daily_cap
        self.fields["max_weekly_cap_value"].initial = p.max_weekly_cap
        self.routing_rules: RoutingRules | None = None

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        changed = set(self.changed_data)
        limits = {
            name.removesuffix("_value"): cleaned.get(name)
            for name in LIMIT_FORM_FIELDS
            if name in changed
        }
        self.routing_rules = rules = self.clean_routing_rules(self.instance, extra=limits)
        for name in ("daily_cap", "weekly_cap") if rules is not None else ():
            cap, most = getattr(rules, name), getattr(rules, f"max_{name}")
            if most is not None and (cap is None or cap > most):
                # Staff's maximum binds what the provider sets; the cap itself must respect it
                # too, or the provider would keep a higher cap than staff allow.
                self.add_error(f"{name}_value", f"At most the maximum you set, {most}.")
        if self.instance.pk is not None and cleaned.get("seen_version") is not None:
            yours = {name: cleaned[name] for name in PROVIDER_FIELDS if name in cleaned}
            if self.routing_rules is not None:
                yours |= routing_values(self.routing_rules)
            # Locks the provider's cursors, then the provider, until the admin's transaction
            # ends: the save that follows writes over exactly the version checked here.
            check_provider_edit(self.instance, seen_version=cleaned["seen_version"], yours=yours)
        return cleaned


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    """Name, quota and status are editable; the quota left and the counters belong to the engine.

    There is deliberately no way to restore quota here: only the payment webhook does that.
    The allocations and quota resets that move those numbers meanwhile do not make an open
    form stale: they leave the version alone, and a quota change is applied to the quota
    left as it is under the lock.
    """

    EDITABLE = ["name", "quota", "status"]
    ENGINE_OWNED = [
        "remaining_quota",
        "cycle",
        "leads_this_cycle",
        "credits_this_cycle",
        "leads_total",
        "routing_now",
        "created_at",
    ]

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
    form = ProviderAdminForm
    list_display_links = ["id", "name"]
    list_filter = ["status", QuotaLeftFilter, "memberships__service"]
    search_fields = ["name"]
    readonly_fields = ENGINE_OWNED
    actions = ["pause_selected", "resume_selected"]

    def get_fieldsets(self, request: HttpRequest, obj: Provider | None = None) -> list:
        """One section per concern, as the Delivery section below them: what the provider is,
        where and when it takes leads, what it may set itself, and the engine's counters."""
        sections = [
            (None, {"fields": [*self.EDITABLE, "seen_version"]}),
            (
                "Routing: areas, hours, time off and caps",
                {
                    "fields": ROUTING_FORM_FIELDS,
                    "description": "Leads come only in these cities, within these hours and "
                    "outside the time off, up to the caps (counted in the provider's timezone).",
                },
            ),
            (
                "Limits on the provider's own changes in the portal",
                {"fields": LIMIT_FORM_FIELDS},
            ),
        ]
        if obj is not None:
            sections.append(("Counters, kept by the engine", {"fields": self.ENGINE_OWNED}))
        return sections

    @admin.display(description="Routing now")
    def routing_now(self, obj: Provider) -> str:
        return "\n".join(describe_routing(obj, timezone.now())[5:])

    def save_model(self, request: HttpRequest, obj: Provider, form: Any, change: bool) -> None:
        if not change:
            # A new provider starts its first cycle with its whole quota.
            obj.remaining_quota = obj.quota
            obj.save()
            if form.routing_rules is not None:
                saved = set_routing(obj, form.routing_rules)
                obj.version = saved.version
            return
        # Only what the operator changed: the rest of the form may be what they saw, not what
        # is stored now (the version check refuses that case, and this keeps it harmless).
        saved = update_provider(
            obj,
            expected_version=form.cleaned_data["seen_version"],
            **form.changes({name: name for name in PROVIDER_FIELDS}),
        )
        if form.routing_rules is not None:
            # Same transaction, the provider still locked by the check: no version to compare.
            saved = set_routing(saved, form.routing_rules)
        for field in [*self.EDITABLE, "version", *self.ENGINE_OWNED[:-2]]:
            setattr(obj, field, getattr(saved, field))
        routing = ("cities", "timezone", "hours", "time_off", "daily_cap", "weekly_cap")
        for field in (*routing, *STAFF_LIMITS):
            setattr(obj, field, getattr(saved, field))

    # The actions write through update_provider too: PostgreSQL moves the version, so a change
    # form opened before the action is refused rather than undoing it.
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
        return obj.next_pool_provider_name or "—"

    def get_queryset(self, request: HttpRequest) -> QuerySet[PoolCursor]:
        # The next pool provider of every row, in the changelist's own query.
        return (
            super()
            .get_queryset(request)
            .annotate(
                next_pool_provider_name=next_pool_provider(
                    "service_id", "position", field="provider__name"
                )
            )
        )
