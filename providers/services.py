"""Writes to the catalogue. Each function owns its transaction and keeps the lock order.

Lock order, everywhere in leaddist: pool cursors by service pk, then providers by pk, then
membership rows (providers/locks.py, the one module that takes these locks). Anything that can
add capacity (resume, quota raised, membership added, quota reset) takes the cursors of the
services it touches first, so it cannot interleave with an allocation of those services: every
allocation sees the catalogue either wholly before or wholly after it.

Edits made from a form carry the version of the row the editor read. Under the row's lock that
version is compared with the stored one; if someone else edited the row meanwhile, the edit is
refused with :class:`EditConflict` and nothing is written. PostgreSQL keeps the versions
(migration providers 0004) and counts catalogue edits only: allocations and quota resets leave
them alone, so a form is never refused because leads were allocated or quotas reset meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from events.services import record_event
from events.types import PROVIDER_UPDATED
from providers.locks import (
    lock_cursors,
    lock_memberships,
    lock_providers,
    lock_providers_with_services,
    lock_service,
)
from providers.models import CityAlias, Membership, PoolCursor, Provider, Service
from providers.routing import (
    DateRange,
    RoutingError,
    check_time_off,
    format_hours,
    next_change,
    normalise_city,
    parse_hours,
    time_off_from_json,
    time_off_to_json,
    time_reason,
    zone,
)
from providers.signals import capacity_added
from providers.sql import SEQUENCES_PAST_SEEDED_ROWS
from providers.validation import MembershipSpec, membership_errors

PROVIDER_FIELDS = ("name", "quota", "status")
SERVICE_FIELDS = ("slug", "name", "active")
MEMBERSHIP_FIELDS = ("provider_id", "role", "position")


class EditConflict(ValidationError):
    """Someone else edited the row after the editor read it; nothing was written.

    Its messages say, for each row, which fields differ: the editor's value against the one
    stored now.
    """


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _conflict_message(
    what: str, seen: int, current: int, differences: list[tuple[str, object, object]]
) -> str:
    text = (
        f"{what} was changed by someone else after you opened this page (you edited version "
        f"{seen}, it is now at version {current}); nothing was saved."
    )
    if differences:
        text += " Your form against what is stored now: " + "; ".join(
            f"{name}: yours “{_shown(yours)}”, now “{_shown(now)}”"
            for name, yours, now in differences
        )
        text += "."
    return text + " Reload the page to see the current values, then make your change again."


def _conflict(
    what: str, row: Provider | Service | Membership, seen_version: int | None, yours: Mapping
) -> str | None:
    """Why an edit made on ``seen_version`` may not be saved over the locked ``row``, or None."""
    if seen_version is None or row.version == seen_version:
        return None
    differences = [
        (name.removesuffix("_id"), value, getattr(row, name))
        for name, value in yours.items()
        if value != getattr(row, name)
    ]
    return _conflict_message(what, seen_version, row.version, differences)


def _check_version(
    what: str, row: Provider | Service | Membership, seen_version: int | None, yours: Mapping
) -> None:
    """Raise EditConflict if the locked ``row`` has moved past ``seen_version``."""
    conflict = _conflict(what, row, seen_version, yours)
    if conflict:
        raise EditConflict(conflict)


def _announce_change(provider: Provider) -> None:
    """Record provider.updated with the change, so dashboards see the committed state."""
    record_event(
        PROVIDER_UPDATED,
        {
            "provider_id": provider.pk,
            "status": provider.status,
            "quota": provider.quota,
            "remaining_quota": provider.remaining_quota,
        },
    )


def _announce_capacity(service_ids: list[int]) -> None:
    if service_ids:
        transaction.on_commit(
            lambda: capacity_added.send(sender=Provider, service_ids=service_ids), robust=True
        )


def _lock_provider(provider_id: int) -> tuple[list[int], Provider]:
    """The cursors of the provider's services, then the provider; return both."""
    service_ids, providers = lock_providers_with_services([provider_id])
    return service_ids, providers[provider_id]


def check_provider_edit(
    provider: Provider, *, seen_version: int, yours: Mapping[str, object]
) -> Provider:
    """Lock the provider as update_provider does and raise EditConflict if its version moved.

    ``yours`` is the editor's whole form (name, quota, status), for the message. Inside the
    caller's transaction the lock stays until it commits: the admin checks while validating,
    then saves with nothing in between.
    """
    with transaction.atomic():
        _, locked = _lock_provider(provider.pk)
        _check_version(f"Provider “{locked.name}”", locked, seen_version, yours)
    return locked


def update_provider(
    provider: Provider,
    *,
    name: str | None = None,
    quota: int | None = None,
    status: str | None = None,
    expected_version: int | None = None,
) -> Provider:
    """Change a provider's name, quota or status under the engine's lock order.

    Only the fields given are written. With ``expected_version`` the change is refused
    (EditConflict) if the provider was edited since that version.

    After a quota change the remaining quota is the new quota less the leads this cycle already
    used, plus the cycle's credits (approved returns), within 0..quota: a plan upgraded
    mid-cycle gives the extra leads at once, the credits stay, and no sequence of changes
    restores used quota. Only the payment webhook does that.
    """
    given = {"name": name, "quota": quota, "status": status}
    changes = {key: value for key, value in given.items() if value is not None}
    with transaction.atomic():
        service_ids, locked = _lock_provider(provider.pk)
        _check_version(f"Provider “{locked.name}”", locked, expected_version, changes)
        was_eligible, old_quota = locked.is_eligible, locked.quota
        written = [key for key, value in changes.items() if getattr(locked, key) != value]
        for key in written:
            setattr(locked, key, changes[key])
        if "quota" in written:
            # What is left is the new quota less what this cycle used net of its credits,
            # never less than 0: lowering a quota and raising it back gives nothing back, and
            # returns credited earlier in the cycle stay credited.
            locked.remaining_quota = locked.remaining_after(
                quota=quota, credits=locked.credits_this_cycle
            )
            written.append("remaining_quota")
        if not written:
            return locked
        locked.save(update_fields=written)
        locked.refresh_from_db(fields=["version"])  # moved by the database's trigger
        _announce_change(locked)
        if locked.is_eligible and (not was_eligible or locked.quota > old_quota):
            _announce_capacity(service_ids)
    return locked


def pause_provider(provider: Provider, *, expected_version: int | None = None) -> Provider:
    """Stop sending leads to the provider; its quota is kept for when it resumes."""
    return update_provider(
        provider, status=Provider.Status.PAUSED, expected_version=expected_version
    )


def resume_provider(provider: Provider, *, expected_version: int | None = None) -> Provider:
    """Send the provider leads again; waiting leads of its services are drained after commit."""
    return update_provider(
        provider, status=Provider.Status.ACTIVE, expected_version=expected_version
    )


def check_service_edit(
    service: Service, *, seen_version: int, yours: Mapping[str, object]
) -> Service:
    """Lock the service (its cursor, then its row) and raise EditConflict if its version moved."""
    with transaction.atomic():
        locked = lock_service(service.pk)
        _check_version(f"Service “{locked.name}”", locked, seen_version, yours)
    return locked


def update_service(
    service: Service,
    *,
    expected_version: int | None = None,
    **changes: Any,
) -> Service:
    """Change a service's slug, name or active flag; only the fields given are written.

    The cursor is locked first, so no lead of the service is allocated between an old and a
    new state. With ``expected_version`` the change is refused (EditConflict) if the service
    was edited since.
    """
    unknown = set(changes) - set(SERVICE_FIELDS)
    if unknown:
        raise TypeError(f"update_service() cannot change {sorted(unknown)}")
    with transaction.atomic():
        locked = lock_service(service.pk)
        _check_version(f"Service “{locked.name}”", locked, expected_version, changes)
        written = [key for key, value in changes.items() if getattr(locked, key) != value]
        for key in written:
            setattr(locked, key, changes[key])
        if written:
            locked.full_clean(exclude=["version"], validate_constraints=False)
            locked.save(update_fields=written)
            locked.refresh_from_db(fields=["version"])
    return locked


@dataclass(frozen=True)
class MembershipEdit:
    """One row of a membership save: a new row (``pk`` None), a change to one, or its removal.

    ``changes`` holds only what the editor changed, by column: ``provider_id``, ``role``,
    ``position`` (a new row needs all three). ``seen_version`` is the row's version the editor
    read; the save is refused if the row was edited since (None: no check).
    """

    pk: int | None = None
    changes: Mapping[str, Any] = field(default_factory=dict)
    delete: bool = False
    seen_version: int | None = None


@dataclass
class MembershipsSaved:
    """What a membership save wrote: the new rows, the changed ones with their changed
    columns, and the removed ones."""

    created: list[Membership] = field(default_factory=list)
    changed: list[tuple[Membership, list[str]]] = field(default_factory=list)
    deleted: list[Membership] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.created or self.changed or self.deleted)


def _keys(spec: MembershipSpec) -> list[tuple[object, ...]]:
    """What a membership row holds uniquely within its service."""
    return [("provider", spec.provider_id), ("position", spec.role, spec.position)]


def _save_order_error(
    current: dict[object, MembershipSpec],
    steps: list[tuple[object, str, MembershipSpec | None]],
) -> str | None:
    """Why a valid end state cannot be reached one row at a time (a swap), or None.

    The database checks uniqueness after every row, so two rows cannot trade a position or a
    provider in one save: it would fail half-way with an IntegrityError.
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
                what = spec.label
                if key[0] == "position":
                    what = f"{spec.role} position {spec.position}"
                return (
                    f"{other.label} still holds {what} when the row of {spec.label} is saved: "
                    "rows are saved one at a time, so a swap needs two saves. First move one of "
                    "them to a free position (or remove it) and save, then finish the change."
                )
        state[row] = spec
        held.update(dict.fromkeys(_keys(spec), row))
    return None


@dataclass
class _Plan:
    rows: dict[int, Membership]
    providers: dict[int, Provider]
    deletes: list[Membership]
    updates: list[tuple[Membership, dict[str, Any]]]
    inserts: list[dict[str, Any]]


def _plan_memberships(service: Service, edits: Sequence[MembershipEdit]) -> _Plan:
    """Lock, check versions and SPEC §1's rules; return what to write, or raise.

    For a service not yet saved (an admin add form) nothing is locked: there is nothing yet.
    """
    saved = service.pk is not None
    if saved:
        lock_cursors([service.pk])
    # Under the cursor lock the service's memberships hold still: every membership write takes
    # it. Read them, then lock the providers involved (before and after the edit) in pk order,
    # then the rows we edit: the order of providers.locks.
    rows: dict[int, Membership] = {}
    if saved:
        members = Membership.objects.filter(service_id=service.pk).select_related("provider")
        rows = {m.pk: m for m in members}
    provider_ids = {rows[e.pk].provider_id for e in edits if e.pk in rows}
    provider_ids |= {e.changes["provider_id"] for e in edits if "provider_id" in e.changes}
    if saved:
        providers = lock_providers(provider_ids)
        rows |= lock_memberships(e.pk for e in edits if e.pk in rows)
    else:
        providers = {p.pk: p for p in Provider.objects.filter(pk__in=provider_ids)}

    conflicts = []
    for edit in edits:
        if edit.pk is None:
            continue
        row = rows.get(edit.pk)
        if row is None and edit.delete:
            continue  # removed already: what the editor wanted
        if row is None:
            conflicts.append(
                f"Membership #{edit.pk} was removed by someone else after you opened this "
                "page; nothing was saved. Reload the page to see the current memberships."
            )
        else:
            what = f"The membership of {row.provider.name} (#{row.pk})"
            conflict = _conflict(what, row, edit.seen_version, edit.changes)
            if conflict:
                conflicts.append(conflict)
    if conflicts:
        raise EditConflict(conflicts)

    unknown = sorted(provider_ids - set(providers))
    if unknown:
        raise ValidationError(f"Unknown provider id(s): {', '.join(map(str, unknown))}.")

    def spec(values: Mapping[str, Any]) -> MembershipSpec:
        pid = values["provider_id"]
        return MembershipSpec(pid, values["role"], values["position"], providers[pid].name)

    current = {pk: MembershipSpec.of(m) for pk, m in rows.items()}
    plan = _Plan(rows, providers, [], [], [])
    steps: list[tuple[object, str, MembershipSpec | None]] = []
    for edit in edits:
        if edit.pk in rows and edit.delete:
            plan.deletes.append(rows[edit.pk])
            steps.append((edit.pk, "delete", None))
    for edit in edits:
        if edit.pk is None or edit.delete:
            continue
        row = rows[edit.pk]
        changes = {k: v for k, v in edit.changes.items() if getattr(row, k) != v}
        if changes:
            plan.updates.append((row, changes))
            values = {k: getattr(row, k) for k in MEMBERSHIP_FIELDS} | changes
            steps.append((edit.pk, "save", spec(values)))
    for index, edit in enumerate(edits):
        if edit.pk is None and not edit.delete:
            missing = set(MEMBERSHIP_FIELDS) - set(edit.changes)
            if missing:
                raise ValidationError(f"A new membership needs {', '.join(sorted(missing))}.")
            plan.inserts.append(dict(edit.changes))
            steps.append((("new", index), "save", spec(edit.changes)))

    final = dict(current)
    for row_key, action, row_spec in steps:
        if action == "delete":
            final.pop(row_key, None)
        else:
            final[row_key] = row_spec
    errors = membership_errors(final.values())
    if errors:
        raise ValidationError(errors)
    order_error = _save_order_error(current, steps)
    if order_error:
        raise ValidationError(order_error)
    return plan


def check_memberships(service: Service, edits: Sequence[MembershipEdit]) -> None:
    """Lock and check these edits as save_memberships would, without writing anything.

    Raises EditConflict (a row edited meanwhile) or ValidationError (SPEC §1's rules). Inside
    the caller's transaction the locks stay until it commits, so a save that follows in it
    finds the same state.
    """
    with transaction.atomic():
        _plan_memberships(service, edits)


def save_memberships(service: Service, edits: Sequence[MembershipEdit]) -> MembershipsSaved:
    """Apply a set of membership edits to one service at once, or nothing.

    1. Lock the service's cursor: no lead of it is allocated half on the old memberships and
       half on the new, and no other membership save of it runs meanwhile.
    2. Lock every provider named before or after the edit, in pk order: the eligibility
       trigger reads them FOR SHARE row by row, which must never be the first lock taken on
       them (an allocation of another service may hold one and wait for the next).
    3. Lock the edited rows, refuse edits over a newer version (EditConflict), check SPEC §1's
       rules on the whole result and that it can be written a row at a time (ValidationError).
    4. Write: removals, then changes in the order given, then new rows. The database moves the
       versions. Record provider.updated for each provider involved and, after the commit,
       send capacity_added so that waiting leads of the service are drained.
    """
    saved = MembershipsSaved()
    with transaction.atomic():
        plan = _plan_memberships(service, edits)
        if plan.deletes:
            Membership.objects.filter(pk__in=[m.pk for m in plan.deletes]).delete()
            saved.deleted = plan.deletes
        involved = {m.provider_id for m in plan.deletes}
        involved |= {row.provider_id for row, _ in plan.updates}
        for row, changes in plan.updates:
            Membership.objects.filter(pk=row.pk).update(**changes)
            row.refresh_from_db(fields=[*MEMBERSHIP_FIELDS, "version", "provider_eligible"])
            saved.changed.append((row, list(changes)))
        for values in plan.inserts:
            saved.created.append(Membership.objects.create(service_id=service.pk, **values))
        if saved:
            # The providers' rows did not change, but what they serve did: the dashboard
            # refreshes their rows and the services' chips on provider.updated.
            involved |= {m.provider_id for m in saved.created}
            involved |= {row.provider_id for row, _ in saved.changed}
            for provider_id in sorted(involved & set(plan.providers)):
                _announce_change(plan.providers[provider_id])
            _announce_capacity([service.pk])
    return saved


def remove_memberships(membership_ids: Sequence[int]) -> list[Membership]:
    """Remove these memberships, of any services, in one transaction; return those removed.

    The cursors of their services, then their providers in pk order, as save_memberships
    does for one service. Waiting leads of those services are drained after the commit (an
    exhausted mandatory provider removed can let them through).
    """
    with transaction.atomic():
        # A membership never moves to another service, so these service ids stay right.
        service_ids = set(
            Membership.objects.filter(pk__in=membership_ids).values_list("service_id", flat=True)
        )
        lock_cursors(service_ids)
        rows = list(Membership.objects.filter(pk__in=membership_ids).order_by("pk"))
        providers = lock_providers(m.provider_id for m in rows)
        Membership.objects.filter(pk__in=[m.pk for m in rows]).delete()
        for provider_id in sorted({m.provider_id for m in rows}):
            _announce_change(providers[provider_id])
        _announce_capacity(sorted({m.service_id for m in rows}))
    return rows


def create_service(*, slug: str, name: str, active: bool = True, pk: int | None = None) -> Service:
    """Create a service together with its pool cursor."""
    with transaction.atomic():
        service = Service.objects.create(pk=pk, slug=slug, name=name, active=active)
        PoolCursor.objects.create(service=service)
    return service


def seed_catalogue() -> dict[str, int]:
    """Create what is missing of SPEC §1's catalogue; never touch an existing provider's quota.

    Returns how many services, providers and memberships it created.
    """
    from django.db import connection

    from providers import catalogue

    created = {"services": 0, "providers": 0, "memberships": 0}
    with transaction.atomic():
        for pk, slug, name in catalogue.SERVICES:
            _, made = Service.objects.get_or_create(pk=pk, defaults={"slug": slug, "name": name})
            created["services"] += made
            PoolCursor.objects.get_or_create(service_id=pk)
        for pk, name in catalogue.PROVIDERS:
            _, made = Provider.objects.get_or_create(
                pk=pk,
                defaults={
                    "name": name,
                    "quota": catalogue.SEED_QUOTA,
                    "remaining_quota": catalogue.SEED_QUOTA,
                },
            )
            created["providers"] += made
        for service_id, (mandatory, pool) in catalogue.MEMBERSHIPS.items():
            for role, ids in ((Membership.Role.MANDATORY, mandatory), (Membership.Role.POOL, pool)):
                for position, provider_id in enumerate(ids, start=1):
                    if Membership.objects.filter(
                        service_id=service_id, provider_id=provider_id
                    ).exists():
                        continue
                    Membership.objects.create(
                        service_id=service_id, provider_id=provider_id, role=role, position=position
                    )
                    created["memberships"] += 1
        # Explicit ids leave the sequences behind; move them past the seeded rows.
        with connection.cursor() as cursor:
            for statement in SEQUENCES_PAST_SEEDED_ROWS:
                cursor.execute(statement)
    return created


def credit_quota(provider: Provider) -> bool:
    """Give one unit of quota back to the provider's current cycle (an approved lead return),
    never above its quota; return whether it did.

    The credit is counted on the provider (``credits_this_cycle``), and the quota left is
    quota - leads this cycle + credits, within 0..quota: a provider whose credits already
    equal its leads this cycle (it is full) gets none, and a quota edited later keeps them.
    While a quota lowered mid-cycle is still below what the cycle used, a credit counts but
    the quota left stays 0.

    Under the engine's lock order: the cursors of the provider's services, then the provider
    (a caller that locked them already in its transaction takes them again at no cost). A
    credit adds capacity, so waiting leads of those services are drained after the commit.
    """
    with transaction.atomic():
        service_ids, locked = _lock_provider(provider.pk)
        # Full: nothing of the cycle is left to give back (credits_this_cycle equals its
        # leads), or, the same thing said by the quota left, no room under the quota.
        full = locked.credits_this_cycle >= locked.leads_this_cycle
        if full or locked.remaining_quota >= locked.quota:
            return False
        locked.credits_this_cycle += 1
        remaining = locked.remaining_after(quota=locked.quota, credits=locked.credits_this_cycle)
        gained = remaining > locked.remaining_quota
        locked.remaining_quota = remaining
        locked.save(update_fields=["credits_this_cycle", "remaining_quota"])
        _announce_change(locked)
        if gained and locked.is_eligible:
            _announce_capacity(service_ids)
    return True


# --- Routing rules (SPEC §2a) -----------------------------------------------------------------

# Providers refreshed per transaction by refresh_routing.
REFRESH_BATCH = 200
KEEP: Any = object()  # set_routing: leave this rule as it is


def city_aliases() -> dict[str, str]:
    """The staff's aliases: normalised alias -> canonical city."""
    return dict(CityAlias.objects.values_list("alias", "city"))


def canonical_cities(names: Iterable[str], aliases: Mapping[str, str] | None = None) -> list[str]:
    """These cities normalised and through the aliases (default: the stored ones), without
    repeats, in order."""
    aliases = city_aliases() if aliases is None else aliases
    cities: list[str] = []
    for name in names:
        key = normalise_city(name)
        key = aliases.get(key, key)
        if key and key not in cities:
            cities.append(key)
    return cities


def listed_cities(provider: Provider) -> list[str]:
    """The cities the provider listed, before the aliases (those it serves, for a provider
    whose list predates ``listed_cities``)."""
    return list(provider.listed_cities or provider.cities)


def _time_state(provider: Provider, now: datetime) -> tuple[bool, str, datetime | None]:
    """The provider's time rules at ``now``, as materialised: open, why not, next change."""
    rules, usage = provider.routing, provider.usage
    reason = time_reason(rules, usage, now)
    return reason is None, reason or "", next_change(rules, usage, now)


def _write_time_state(provider: Provider, now: datetime) -> bool:
    """Write the materialised state if it moved; return whether the provider opened."""
    state = _time_state(provider, now)
    was_open = provider.routing_open
    if state == (provider.routing_open, provider.routing_reason, provider.routing_changes_at):
        return False
    provider.routing_open, provider.routing_reason, provider.routing_changes_at = state
    # A bulk update: these columns are the engine's, not catalogue edits.
    Provider.objects.filter(pk=provider.pk).update(
        routing_open=state[0], routing_reason=state[1], routing_changes_at=state[2]
    )
    return state[0] and not was_open


def refresh_routing(
    *, provider_ids: Iterable[int] | None = None, now: datetime | None = None
) -> int:
    """Bring the materialised time-rule state of providers up to ``now``; return how many moved.

    Those given, or (None) every provider whose ``routing_changes_at`` has come, in batches.
    Each batch locks the cursors of the providers' services, then the providers, as every
    capacity change does: a provider whose hours begin, whose time off ends or whose cap window
    rolls over adds capacity, and its services' waiting leads are drained after the commit.
    """
    now = now or timezone.now()
    moved = 0
    while True:
        if provider_ids is None:
            due = Provider.objects.filter(routing_changes_at__lte=now).order_by(
                "routing_changes_at"
            )
            ids = list(due.values_list("pk", flat=True)[:REFRESH_BATCH])
        else:
            ids = sorted(set(provider_ids))
        if not ids:
            return moved
        with transaction.atomic():
            service_ids, locked = lock_providers_with_services(ids)
            opened = False
            for provider in locked.values():
                before = provider.routing_open
                opened |= _write_time_state(provider, now)
                if provider.routing_open != before:
                    moved += 1
                    _announce_change(provider)
            if opened:
                _announce_capacity(service_ids)
        if provider_ids is not None or len(ids) < REFRESH_BATCH:
            return moved


@dataclass(frozen=True)
class RoutingRules:
    """A provider's routing rules as an editor gives them, checked (see clean_routing)."""

    cities: list[str]
    timezone: str
    hours: str
    time_off: list[DateRange]
    daily_cap: int | None
    weekly_cap: int | None
    listed_cities: list[str]  # ``cities`` before the aliases
    # Staff's limits on what the provider sets itself (SPEC §9).
    areas_locked: bool = False
    max_daily_cap: int | None = None
    max_weekly_cap: int | None = None


CAP_NAMES = {"daily_cap": "daily", "weekly_cap": "weekly"}


def _cap_error(value: Any) -> str | None:
    if value is None or (not isinstance(value, bool) and isinstance(value, int) and value >= 0):
        return None
    return f"A cap is a whole number of leads, 0 or more; not {value}."


def clean_routing(
    provider: Provider,
    *,
    cities: Any = KEEP,
    tz: Any = KEEP,
    hours: Any = KEEP,
    time_off: Any = KEEP,
    add_time_off: Sequence[DateRange] = (),
    daily_cap: Any = KEEP,
    weekly_cap: Any = KEEP,
    areas_locked: Any = KEEP,
    max_daily_cap: Any = KEEP,
    max_weekly_cap: Any = KEEP,
) -> RoutingRules:
    """The provider's rules with these changes, checked; ValidationError says what is wrong.

    ``cities``: names (normalised and through the aliases here; empty: everywhere); ``tz``: an
    IANA name or '' (the site's); ``hours``: text for parse_hours ('' or 'always': always open);
    ``time_off``: the whole list of ranges; ``add_time_off``: ranges added to it; caps: a
    number >= 0 or None (no cap). Staff's limits (``areas_locked``, ``max_daily_cap``,
    ``max_weekly_cap``: a number >= 0 or None) are checked alike. KEEP leaves a rule as it is.
    """
    errors: dict[str, list[str]] = {}

    def check(name: str, make: Any) -> Any:
        try:
            return make()
        except RoutingError as exc:
            errors.setdefault(name, []).append(str(exc))
            return None

    if cities is KEEP:
        new_cities, new_listed = list(provider.cities), listed_cities(provider)
    else:
        new_listed = list(dict.fromkeys(key for key in map(normalise_city, cities) if key))
        new_cities = canonical_cities(new_listed)
    new_tz = provider.timezone if tz is KEEP else (tz or "").strip()
    if new_tz:
        check("timezone", lambda: zone(new_tz))
    new_hours = (
        provider.hours
        if hours is KEEP
        else check("hours", lambda: format_hours(parse_hours(hours or "")))
    )
    ranges = list(time_off_from_json(provider.time_off)) if time_off is KEEP else list(time_off)
    ranges += list(add_time_off)
    new_time_off = check("time_off", lambda: check_time_off(ranges))
    caps = {}
    given = {
        "daily_cap": daily_cap,
        "weekly_cap": weekly_cap,
        "max_daily_cap": max_daily_cap,
        "max_weekly_cap": max_weekly_cap,
    }
    for name, value in given.items():
        value = getattr(provider, name) if value is KEEP else value
        error = _cap_error(value)
        if error:
            errors.setdefault(name, []).append(error)
        caps[name] = value
    if errors:
        raise ValidationError(errors)
    return RoutingRules(
        new_cities,
        new_tz,
        new_hours or "",
        new_time_off or [],
        caps["daily_cap"],
        caps["weekly_cap"],
        new_listed,
        provider.areas_locked if areas_locked is KEEP else bool(areas_locked),
        caps["max_daily_cap"],
        caps["max_weekly_cap"],
    )


def routing_values(rules: RoutingRules) -> dict[str, Any]:
    """The provider columns these rules are stored in."""
    return {
        "cities": rules.cities,
        "listed_cities": rules.listed_cities,
        "timezone": rules.timezone,
        "hours": rules.hours,
        "time_off": time_off_to_json(rules.time_off),
        "daily_cap": rules.daily_cap,
        "weekly_cap": rules.weekly_cap,
        "areas_locked": rules.areas_locked,
        "max_daily_cap": rules.max_daily_cap,
        "max_weekly_cap": rules.max_weekly_cap,
    }


STAFF_LIMITS = ("areas_locked", "max_daily_cap", "max_weekly_cap")


def provider_limit_errors(provider: Provider, values: Mapping[str, Any]) -> dict[str, list[str]]:
    """What staff's limits forbid in these routing values, set by the provider itself (SPEC §9),
    by field; only what changes is judged, so a rule staff set stays as it is.

    Staff's limits are staff's alone; the areas are staff's while ``areas_locked``; a cap is at
    most the cycle quota (a higher one would never apply) and at most staff's maximum, and
    "no cap" is refused while staff set a maximum.
    """
    errors: dict[str, list[str]] = {}
    for name in STAFF_LIMITS:
        if values[name] != getattr(provider, name):
            errors[name] = ["Only the marketplace's staff set this."]
    if provider.areas_locked and values["cities"] != list(provider.cities):
        errors["cities"] = [
            "Your areas are set by the marketplace's staff: ask them to change them."
        ]
    for name, which in CAP_NAMES.items():
        value, most = values[name], getattr(provider, f"max_{name}")
        if value == getattr(provider, name):
            continue
        ceiling = provider.quota if most is None else min(most, provider.quota)
        why = (
            f"the marketplace's staff allow a {which} cap of at most {most}"
            if most is not None and most <= provider.quota
            else f"a higher {which} cap than your quota ({provider.quota} leads a cycle) "
            "would never apply"
        )
        if value is None and most is not None:
            errors[name] = [f"Choose a number from 0 to {ceiling}: {why}."]
        elif value is not None and value > ceiling:
            errors[name] = [f"At most {ceiling}: {why}."]
    return errors


def set_routing(
    provider: Provider,
    rules: RoutingRules,
    *,
    expected_version: int | None = None,
    now: datetime | None = None,
    by_provider: bool = False,
) -> Provider:
    """Give the provider these routing rules (from clean_routing), under the engine's lock order.

    The cursors of its services, then the provider; with ``expected_version`` the change is
    refused (EditConflict) if the provider was edited since. ``by_provider`` (the portal): what
    staff's limits forbid is refused (ValidationError, provider_limit_errors), judged against
    the row under its lock, so a limit staff set meanwhile is never passed. The materialised
    time state is recomputed in the same transaction. If the provider can take leads
    afterwards, its services' waiting leads are drained after the commit: an area added, a cap
    raised or removed, hours or time off changed may all let some through.
    """
    now = now or timezone.now()
    values = routing_values(rules)
    with transaction.atomic():
        service_ids, locked = _lock_provider(provider.pk)
        _check_version(f"Provider “{locked.name}”", locked, expected_version, values)
        if by_provider:
            errors = provider_limit_errors(locked, values)
            if errors:
                raise ValidationError(errors)
        written = [key for key, value in values.items() if getattr(locked, key) != value]
        if not written:
            return locked
        for key in written:
            setattr(locked, key, values[key])
        locked.save(update_fields=written)
        locked.refresh_from_db(fields=["version"])
        _write_time_state(locked, now)
        _announce_change(locked)
        if locked.is_eligible:
            _announce_capacity(service_ids)
    return locked
