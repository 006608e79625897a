"""Catalogue admin: pages render, SPEC §1's rules become form errors, quota is never restored."""

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from allocation.models import Lead
from allocation.services import LeadInput, submit_lead
from providers.models import Membership, PoolCursor, Provider, Service
from providers.services import MembershipEdit, remove_memberships, save_memberships, update_service
from providers.tests.factories import ProviderFactory
from providers.validation import MembershipSpec, membership_errors, validate_membership

pytestmark = pytest.mark.django_db

PREFIX = "memberships"


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def lead_for(service_id, n=0):
    return LeadInput(service_id=service_id, name="Ada", phone=f"+1555{n:07d}", city="Springfield")


def memberships_of(service_id):
    return sorted(
        Membership.objects.filter(service_id=service_id).values_list(
            "role", "position", "provider_id"
        )
    )


def service_post(service, *, changes=None, delete=(), add=()):
    """The service change form as the browser posts it: every current row, edited, plus new rows.

    changes maps provider id -> {field: value}; delete lists provider ids; add lists
    (provider id, role, position).
    """
    changes = changes or {}
    rows = list(Membership.objects.filter(service=service).order_by("role", "position"))
    data = {
        "slug": service.slug,
        "name": service.name,
        "active": "on" if service.active else "",
        "seen_version": str(service.version),
        f"{PREFIX}-TOTAL_FORMS": str(len(rows) + len(add)),
        f"{PREFIX}-INITIAL_FORMS": str(len(rows)),
        f"{PREFIX}-MIN_NUM_FORMS": "0",
        f"{PREFIX}-MAX_NUM_FORMS": "1000",
    }
    for index, row in enumerate(rows):
        values = {"provider": row.provider_id, "role": row.role, "position": row.position}
        values.update(changes.get(row.provider_id, {}))
        data.update(
            {
                f"{PREFIX}-{index}-id": str(row.pk),
                f"{PREFIX}-{index}-service": str(service.pk),
                f"{PREFIX}-{index}-seen_version": str(row.version),
                **{f"{PREFIX}-{index}-{key}": str(value) for key, value in values.items()},
            }
        )
        if row.provider_id in delete:
            data[f"{PREFIX}-{index}-DELETE"] = "on"
    for offset, (provider_id, role, position) in enumerate(add):
        index = len(rows) + offset
        data.update(
            {
                f"{PREFIX}-{index}-id": "",
                f"{PREFIX}-{index}-service": str(service.pk),
                f"{PREFIX}-{index}-provider": str(provider_id),
                f"{PREFIX}-{index}-role": role,
                f"{PREFIX}-{index}-position": str(position),
            }
        )
    return data


def change_url(model, pk):
    return reverse(f"admin:providers_{model}_change", args=[pk])


def errors_of(response):
    """Every error message on an admin change page that did not save."""
    assert response.status_code == 200, "the form was expected to be redisplayed"
    messages = [str(e) for e in response.context["errors"]]
    for formset in response.context["inline_admin_formsets"]:
        messages += [str(e) for e in formset.formset.non_form_errors()]
    return " ".join(messages)


def provider_post(provider, **overrides):
    data = {
        "name": provider.name,
        "quota": provider.quota,
        "status": provider.status,
        "seen_version": provider.version,
    }
    data.update(overrides)
    return data


# --- pages --------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["service", "provider", "membership", "poolcursor"])
def test_changelists_render_for_staff(admin_client, seeded, model):
    response = admin_client.get(reverse(f"admin:providers_{model}_changelist"))

    assert response.status_code == 200


@pytest.mark.parametrize("model", ["service", "provider", "membership"])
def test_add_forms_render_for_staff(admin_client, seeded, model):
    response = admin_client.get(reverse(f"admin:providers_{model}_add"))

    assert response.status_code == 200


def test_change_forms_render_for_staff(admin_client, seeded):
    urls = [
        change_url("service", 3),
        change_url("provider", 1),
        change_url("membership", Membership.objects.first().pk),
        change_url("poolcursor", PoolCursor.objects.get(service_id=1).pk),
    ]

    statuses = [admin_client.get(url).status_code for url in urls]

    assert statuses == [200, 200, 200, 200]


def test_changelists_filter_and_search(admin_client, seeded):
    Provider.objects.filter(pk=2).update(remaining_quota=0)
    url = reverse("admin:providers_provider_changelist")

    exhausted = admin_client.get(url, {"quota_left": "no"})
    searched = admin_client.get(url, {"q": "Provider 7"})
    in_service_2 = admin_client.get(url, {"memberships__service__id__exact": "2"})

    assert [p.pk for p in exhausted.context["cl"].result_list] == [2]
    assert [p.pk for p in searched.context["cl"].result_list] == [7]
    assert sorted(p.pk for p in in_service_2.context["cl"].result_list) == [5, 6, 7, 8]


def test_anonymous_users_are_sent_to_the_login_page(client, seeded):
    response = client.get(reverse("admin:providers_provider_changelist"))

    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]


def test_cursor_page_shows_the_next_pool_provider(admin_client, seeded):
    submit_lead(lead_for(1))  # P1 + P2, P3: the cursor stops at position 2

    response = admin_client.get(reverse("admin:providers_poolcursor_changelist"))

    rows = {c.service_id: c for c in response.context["cl"].result_list}
    admin = response.context["cl"].model_admin
    assert rows[1].position == 2
    assert admin.next_pool_provider(rows[1]) == "Provider 4"
    assert admin.next_pool_provider(rows[2]) == "Provider 6"


def test_cursors_cannot_be_added_changed_or_deleted(admin_client, seeded):
    cursor = PoolCursor.objects.get(service_id=1)

    add = admin_client.get(reverse("admin:providers_poolcursor_add"))
    change = admin_client.post(change_url("poolcursor", cursor.pk), {"position": "3"})
    delete = admin_client.post(
        reverse("admin:providers_poolcursor_delete", args=[cursor.pk]), {"post": "yes"}
    )

    assert add.status_code == 403
    assert change.status_code == 403
    assert delete.status_code == 403
    assert PoolCursor.objects.get(service_id=1).position is None


# --- services and their memberships --------------------------------------------------------


def test_creating_a_service_creates_its_cursor(admin_client, seeded):
    response = admin_client.post(
        reverse("admin:providers_service_add"),
        {
            "slug": "roofing",
            "name": "Roofing",
            "active": "on",
            f"{PREFIX}-TOTAL_FORMS": "1",
            f"{PREFIX}-INITIAL_FORMS": "0",
            f"{PREFIX}-MIN_NUM_FORMS": "0",
            f"{PREFIX}-MAX_NUM_FORMS": "1000",
            f"{PREFIX}-0-provider": "1",
            f"{PREFIX}-0-role": "mandatory",
            f"{PREFIX}-0-position": "1",
        },
    )

    assert response.status_code == 302
    service = Service.objects.get(slug="roofing")
    assert PoolCursor.objects.filter(service=service, position=None).exists()
    assert memberships_of(service.pk) == [("mandatory", 1, 1)]


def test_inline_rejects_a_fourth_mandatory_provider(admin_client, seeded):
    extra = ProviderFactory.create_batch(2)
    service = Service.objects.get(pk=3)  # mandatory: P1, P4
    before = memberships_of(3)

    response = admin_client.post(
        change_url("service", 3),
        service_post(service, add=[(extra[0].pk, "mandatory", 3), (extra[1].pk, "mandatory", 3)]),
    )

    errors = errors_of(response)
    assert "A service has at most 3 mandatory providers; this one would have 4" in errors
    assert "Mandatory position 3 is given to" in errors
    assert memberships_of(3) == before


def test_inline_rejects_a_mandatory_position_beyond_3(admin_client, seeded):
    extra = ProviderFactory()
    service = Service.objects.get(pk=3)
    before = memberships_of(3)

    response = admin_client.post(
        change_url("service", 3), service_post(service, add=[(extra.pk, "mandatory", 4)])
    )

    assert response.status_code == 200
    formset = response.context["inline_admin_formsets"][0].formset
    assert "Mandatory positions are 1 to 3" in str(formset.errors)
    assert memberships_of(3) == before


def test_inline_rejects_a_provider_twice_in_a_service(admin_client, seeded):
    service = Service.objects.get(pk=1)  # P2 is in the pool
    before = memberships_of(1)

    response = admin_client.post(
        change_url("service", 1), service_post(service, add=[(2, "mandatory", 2)])
    )

    assert "Provider 2 appears 2 times in this service" in errors_of(response)
    assert memberships_of(1) == before


def test_inline_rejects_a_position_used_twice(admin_client, seeded):
    service = Service.objects.get(pk=1)
    before = memberships_of(1)

    response = admin_client.post(
        change_url("service", 1), service_post(service, add=[(5, "pool", 2)])
    )

    assert "Pool position 2 is given to Provider 3 and Provider 5" in errors_of(response)
    assert memberships_of(1) == before


def test_inline_explains_that_a_swap_needs_two_saves(admin_client, seeded):
    service = Service.objects.get(pk=1)
    before = memberships_of(1)

    response = admin_client.post(
        change_url("service", 1),
        service_post(service, changes={2: {"position": 2}, 3: {"position": 1}}),
    )

    assert "a swap needs two saves" in errors_of(response)
    assert memberships_of(1) == before


def test_inline_may_free_a_position_and_reuse_it_in_one_save(admin_client, seeded):
    service = Service.objects.get(pk=1)

    response = admin_client.post(
        change_url("service", 1), service_post(service, delete=[4], add=[(5, "pool", 3)])
    )

    assert response.status_code == 302
    assert memberships_of(1) == [
        ("mandatory", 1, 1),
        ("pool", 1, 2),
        ("pool", 2, 3),
        ("pool", 3, 5),
    ]


def test_adding_pool_providers_drains_the_services_waiting_leads(
    admin_client, seeded, django_capture_on_commit_callbacks
):
    Provider.objects.filter(pk__in=[2, 3, 4]).update(status=Provider.Status.PAUSED)
    lead = submit_lead(lead_for(1))
    assert lead.status == Lead.Status.WAITING
    service = Service.objects.get(pk=1)

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            change_url("service", 1), service_post(service, add=[(5, "pool", 4), (6, "pool", 5)])
        )

    assert response.status_code == 302
    lead.refresh_from_db()
    assert lead.status == Lead.Status.ALLOCATED
    assert sorted(lead.allocations.values_list("provider_id", flat=True)) == [1, 5, 6]


def test_membership_admin_rejects_a_duplicate_provider(admin_client, seeded):
    before = Membership.objects.count()

    response = admin_client.post(
        reverse("admin:providers_membership_add"),
        {"service": "1", "provider": "3", "role": "pool", "position": "9"},
    )

    assert response.status_code == 200
    assert "Provider 3 appears 2 times in this service" in str(response.context["errors"])
    assert Membership.objects.count() == before


def test_membership_admin_rejects_a_fourth_mandatory(admin_client, seeded):
    extra = ProviderFactory.create_batch(2)
    Membership.objects.create(service_id=3, provider=extra[0], role="mandatory", position=3)

    response = admin_client.post(
        reverse("admin:providers_membership_add"),
        {"service": "3", "provider": str(extra[1].pk), "role": "mandatory", "position": "3"},
    )

    assert response.status_code == 200
    assert "at most 3 mandatory providers" in str(response.context["errors"])
    assert Membership.objects.filter(service_id=3).mandatory().count() == 3


def test_membership_admin_adds_a_valid_membership(admin_client, seeded):
    response = admin_client.post(
        reverse("admin:providers_membership_add"),
        {"service": "1", "provider": "5", "role": "pool", "position": "4"},
    )

    assert response.status_code == 302
    assert ("pool", 4, 5) in memberships_of(1)


# --- providers -------------------------------------------------------------------------------


def test_provider_form_offers_no_way_to_change_the_remaining_quota(admin_client, seeded):
    response = admin_client.get(change_url("provider", 1))

    form = response.context["adminform"].form
    # name, quota, status, the version the page was opened at, and delivery/admin.py's endpoint
    assert set(form.fields) == {
        "name",
        "quota",
        "status",
        "webhook_url",
        "delivery_email",
        "rotate_secret",
        "seen_version",
        # the routing rules (SPEC §2a)
        "cities_text",
        "timezone_name",
        "hours_text",
        "time_off_text",
        "daily_cap_value",
        "weekly_cap_value",
        # what the provider may set itself in the portal (SPEC §9)
        "areas_locked_value",
        "max_daily_cap_value",
        "max_weekly_cap_value",
    }
    assert 'name="remaining_quota"' not in response.content.decode()


def test_posting_a_remaining_quota_is_ignored(admin_client, seeded):
    Provider.objects.filter(pk=1).update(remaining_quota=0)

    response = admin_client.post(
        change_url("provider", 1),
        provider_post(Provider.objects.get(pk=1), remaining_quota="10", cycle="7"),
    )

    assert response.status_code == 302
    assert Provider.objects.filter(pk=1).values_list("remaining_quota", "cycle").get() == (0, 1)


def test_raising_a_quota_gives_the_extra_leads_at_once(admin_client, seeded):
    Provider.objects.filter(pk=1).update(remaining_quota=4, leads_this_cycle=6)

    admin_client.post(change_url("provider", 1), provider_post(seeded.provider(1), quota=12))

    assert Provider.objects.filter(pk=1).values_list("quota", "remaining_quota").get() == (12, 6)


def test_lowering_a_quota_below_what_is_used_leaves_no_quota(admin_client, seeded):
    Provider.objects.filter(pk=1).update(remaining_quota=4, leads_this_cycle=6)

    response = admin_client.post(
        change_url("provider", 1), provider_post(seeded.provider(1), quota=3)
    )

    assert response.status_code == 302
    assert Provider.objects.filter(pk=1).values_list("quota", "remaining_quota").get() == (3, 0)


def test_lowering_then_raising_a_quota_does_not_restore_used_quota(admin_client, seeded):
    Provider.objects.filter(pk=1).update(remaining_quota=2, leads_this_cycle=8)

    admin_client.post(change_url("provider", 1), provider_post(seeded.provider(1), quota=0))
    admin_client.post(change_url("provider", 1), provider_post(seeded.provider(1), quota=10))

    assert Provider.objects.get(pk=1).remaining_quota == 2


def test_renaming_a_provider_keeps_its_quota(admin_client, seeded):
    Provider.objects.filter(pk=1).update(remaining_quota=4, leads_this_cycle=6)

    admin_client.post(change_url("provider", 1), provider_post(seeded.provider(1), name="Acme"))

    assert Provider.objects.filter(pk=1).values_list("name", "quota", "remaining_quota").get() == (
        "Acme",
        10,
        4,
    )


def test_a_new_provider_starts_with_its_whole_quota(admin_client, seeded):
    response = admin_client.post(
        reverse("admin:providers_provider_add"), {"name": "Newco", "quota": "5", "status": "active"}
    )

    assert response.status_code == 302
    assert Provider.objects.filter(name="Newco").values_list("quota", "remaining_quota").get() == (
        5,
        5,
    )


def test_pause_action_pauses_the_selected_providers(admin_client, seeded):
    response = admin_client.post(
        reverse("admin:providers_provider_changelist"),
        {"action": "pause_selected", "_selected_action": ["3", "2"]},
    )

    assert response.status_code == 302
    assert dict(Provider.objects.values_list("pk", "status"))[2] == "paused"
    assert list(Provider.objects.filter(status="paused").values_list("pk", flat=True)) == [2, 3]
    assert not Membership.objects.filter(provider_id__in=[2, 3], provider_eligible=True).exists()


def test_resume_action_resumes_and_drains_waiting_leads(
    admin_client, seeded, django_capture_on_commit_callbacks
):
    changelist = reverse("admin:providers_provider_changelist")
    admin_client.post(changelist, {"action": "pause_selected", "_selected_action": ["2", "3", "4"]})
    first, second = submit_lead(lead_for(1, 1)), submit_lead(lead_for(1, 2))
    assert [first.status, second.status] == [Lead.Status.WAITING, Lead.Status.WAITING]

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            changelist, {"action": "resume_selected", "_selected_action": ["2", "3", "4"]}
        )

    assert response.status_code == 302
    assert set(Provider.objects.filter(pk__in=[2, 3, 4]).values_list("status", flat=True)) == {
        "active"
    }
    assert list(
        Lead.objects.filter(pk__in=[first.pk, second.pk])
        .order_by("pk")
        .values_list("status", flat=True)
    ) == ["allocated", "allocated"]
    assert list(first.allocations.order_by("rank").values_list("provider_id", flat=True)) == [
        1,
        2,
        3,
    ]


# --- validation in code ----------------------------------------------------------------------


def test_membership_rules_are_checkable_in_code(seeded):
    specs = [
        MembershipSpec(1, "mandatory", 1, "A"),
        MembershipSpec(2, "mandatory", 2, "B"),
        MembershipSpec(3, "mandatory", 3, "C"),
        MembershipSpec(4, "mandatory", 5, "D"),
        MembershipSpec(4, "pool", 1, "D"),
        MembershipSpec(5, "pool", 1, "E"),
    ]

    errors = membership_errors(specs)

    assert errors == [
        "A service has at most 3 mandatory providers; this one would have 4 (A, B, C, D).",
        "Mandatory positions are 1 to 3; D has position 5.",
        "D appears 2 times in this service; a provider joins a service once, as mandatory or "
        "as pool.",
        "Pool position 1 is given to D and E; positions are unique per role.",
    ]


def test_validate_membership_checks_against_the_services_rows(seeded):
    duplicate = Membership(service_id=1, provider_id=2, role="mandatory", position=2)
    fine = Membership(service_id=1, provider_id=5, role="pool", position=4)

    with pytest.raises(ValidationError, match="Provider 2 appears 2 times"):
        validate_membership(duplicate)
    validate_membership(fine)


@pytest.mark.django_db
def test_the_blank_membership_row_shows_no_eligibility_only_saved_rows_do(admin_client, seeded):
    Provider.objects.filter(pk=2).update(remaining_quota=0)

    page = admin_client.get(change_url("service", 1)).content.decode()

    rows = page.split('<tr class="form-row')[1:]
    saved = [row for row in rows if "has_original" in row.split(">")[0]]
    blank = [row for row in rows if "has_original" not in row.split(">")[0]]
    assert len(saved) == 4  # P1 mandatory; P2, P3, P4 in the pool
    assert sum("icon-yes.svg" in row for row in saved) == 3
    assert sum("icon-no.svg" in row for row in saved) == 1  # P2, out of quota
    assert blank
    for row in blank:
        assert "icon-yes.svg" not in row
        assert "icon-no.svg" not in row


# --- concurrent edits: no silent overwrite ------------------------------------------------------


def opened_form(response):
    """What the browser would post back from a change page: every field as rendered."""
    form = response.context["adminform"].form
    return {
        name: form[name].value() if form[name].value() is not None else "" for name in form.fields
    }


def test_stale_provider_form_is_refused_with_what_changed_and_nothing_is_written(
    admin_client, seeded
):
    opened = opened_form(admin_client.get(change_url("provider", 8)))
    admin_client.post(
        reverse("admin:providers_provider_changelist"),
        {"action": "pause_selected", "_selected_action": ["8"]},
    )
    before = Provider.objects.filter(pk=8).values().get()

    response = admin_client.post(change_url("provider", 8), opened | {"name": "Acme"})

    errors = errors_of(response)
    assert "Provider “Provider 8” was changed by someone else after you opened this page" in errors
    assert "nothing was saved" in errors
    assert "name: yours “Acme”, now “Provider 8”" in errors
    assert "status: yours “active”, now “paused”" in errors
    assert Provider.objects.filter(pk=8).values().get() == before


def test_provider_form_on_the_current_version_writes_only_what_changed(admin_client, seeded):
    opened = opened_form(admin_client.get(change_url("provider", 8)))

    with CaptureQueriesContext(connection) as queries:
        response = admin_client.post(change_url("provider", 8), opened | {"name": "Acme"})

    assert response.status_code == 302
    assert Provider.objects.filter(pk=8).values_list("name", "status", "version").get() == (
        "Acme",
        "active",
        2,
    )
    (update,) = [q["sql"] for q in queries if q["sql"].startswith('UPDATE "providers_provider"')]
    assert '"name" =' in update
    assert '"status" =' not in update
    assert '"quota" =' not in update


def test_provider_form_saved_unchanged_writes_nothing(admin_client, seeded):
    opened = opened_form(admin_client.get(change_url("provider", 8)))

    with CaptureQueriesContext(connection) as queries:
        response = admin_client.post(change_url("provider", 8), opened)

    assert response.status_code == 302
    assert not [q for q in queries if q["sql"].startswith('UPDATE "providers_provider"')]
    assert Provider.objects.get(pk=8).version == 1


def test_provider_form_opened_before_leads_took_quota_keeps_their_count(admin_client, seeded):
    opened = opened_form(admin_client.get(change_url("provider", 5)))
    submit_lead(lead_for(2))  # P5 has 9 left

    response = admin_client.post(change_url("provider", 5), opened | {"quota": "12"})

    assert response.status_code == 302
    assert Provider.objects.filter(pk=5).values_list("quota", "remaining_quota").get() == (12, 11)


def test_provider_form_without_its_version_is_refused(admin_client, seeded):
    data = provider_post(seeded.provider(1), name="Acme")
    del data["seen_version"]

    response = admin_client.post(change_url("provider", 1), data)

    assert "reload the page" in errors_of(response)
    assert Provider.objects.get(pk=1).name == "Provider 1"


def test_stale_service_form_is_refused(admin_client, seeded):
    opened = service_post(seeded.service(1))
    update_service(seeded.service(1), active=False)

    response = admin_client.post(change_url("service", 1), opened | {"name": "Plumbing"})

    assert "active: yours “yes”, now “no”" in errors_of(response)
    assert Service.objects.filter(pk=1).values_list("name", "active").get() == ("Service 1", False)


def test_stale_membership_row_is_refused_and_nothing_of_the_save_is_written(admin_client, seeded):
    service = seeded.service(1)
    opened = service_post(service, changes={3: {"position": 5}}, add=[(6, "pool", 6)])
    p4 = Membership.objects.get(service_id=1, provider_id=4)
    save_memberships(service, [MembershipEdit(p4.pk, {"position": 7})])
    before = memberships_of(1)

    response = admin_client.post(change_url("service", 1), opened)

    errors = errors_of(response)
    assert "The membership of Provider 4" in errors
    assert "position: yours “3”, now “7”" in errors
    assert memberships_of(1) == before


def test_rows_edited_by_someone_else_but_untouched_here_are_left_alone(admin_client, seeded):
    service = seeded.service(1)
    p4 = Membership.objects.get(service_id=1, provider_id=4)
    save_memberships(service, [MembershipEdit(p4.pk, {"position": 7})])
    current = service_post(service, add=[(6, "pool", 6)])

    response = admin_client.post(change_url("service", 1), current)

    assert response.status_code == 302
    assert ("pool", 7, 4) in memberships_of(1)
    assert ("pool", 6, 6) in memberships_of(1)


def test_stale_membership_admin_form_is_refused(admin_client, seeded):
    p4 = Membership.objects.get(service_id=1, provider_id=4)
    opened = opened_form(admin_client.get(change_url("membership", p4.pk)))
    save_memberships(seeded.service(1), [MembershipEdit(p4.pk, {"position": 7})])

    response = admin_client.post(change_url("membership", p4.pk), opened | {"role": "pool"})

    assert "position: yours “3”, now “7”" in errors_of(response)
    assert Membership.objects.get(pk=p4.pk).position == 7


def test_membership_admin_change_goes_through_the_service(admin_client, seeded):
    p4 = Membership.objects.get(service_id=1, provider_id=4)
    opened = opened_form(admin_client.get(change_url("membership", p4.pk)))

    response = admin_client.post(change_url("membership", p4.pk), opened | {"position": "8"})

    assert response.status_code == 302
    assert Membership.objects.filter(pk=p4.pk).values_list("position", "version").get() == (8, 2)


def test_membership_removed_by_someone_else_is_named_in_the_refusal(admin_client, seeded):
    opened = service_post(seeded.service(1), changes={2: {"position": 5}})
    p3 = Membership.objects.get(service_id=1, provider_id=3)
    remove_memberships([p3.pk])
    before = memberships_of(1)

    response = admin_client.post(change_url("service", 1), opened)

    assert f"Membership #{p3.pk} was removed by someone else" in errors_of(response)
    assert memberships_of(1) == before


def test_removing_a_row_someone_else_changed_is_refused(admin_client, seeded):
    opened = service_post(seeded.service(1), delete=[4])
    p4 = Membership.objects.get(service_id=1, provider_id=4)
    save_memberships(seeded.service(1), [MembershipEdit(p4.pk, {"position": 7})])

    response = admin_client.post(change_url("service", 1), opened)

    assert "The membership of Provider 4" in errors_of(response)
    assert ("pool", 7, 4) in memberships_of(1)


# --- routing rules (SPEC §2a) --------------------------------------------------------------


def test_the_provider_page_edits_the_routing_rules(admin_client, seeded):
    provider = Provider.objects.get(pk=2)

    response = admin_client.post(
        change_url("provider", 2),
        provider_post(
            provider,
            cities_text="Oslo, bergen ",
            timezone_name="Europe/Oslo",
            hours_text="Mon-Fri 08:00-18:00",
            time_off_text="2026-12-24..2026-12-26, 2027-01-01",
            daily_cap_value="5",
        ),
    )

    assert response.status_code == 302
    provider.refresh_from_db()
    assert provider.cities == ["oslo", "bergen"]
    assert (provider.timezone, provider.hours) == ("Europe/Oslo", "mon-fri 08:00-18:00")
    assert provider.time_off == [["2026-12-24", "2026-12-26"], ["2027-01-01", "2027-01-01"]]
    assert (provider.daily_cap, provider.weekly_cap) == (5, None)
    page = admin_client.get(change_url("provider", 2)).content.decode()
    assert "Routing now" in page


def test_bad_routing_rules_are_refused_on_their_fields_and_nothing_changes(admin_client, seeded):
    provider = Provider.objects.get(pk=2)

    response = admin_client.post(
        change_url("provider", 2),
        provider_post(
            provider,
            name="Renamed",
            timezone_name="Mars/Olympus",
            hours_text="mon 18:00-08:00",
            time_off_text="2026-12-26..2026-12-24",
        ),
    )

    errors = errors_of(response)
    assert "Unknown timezone" in errors
    assert "ends before it starts" in errors
    assert Provider.objects.get(pk=2).name == "Provider 2"
    assert Provider.objects.get(pk=2).version == provider.version


def test_a_routing_edit_made_meanwhile_makes_the_page_stale(admin_client, seeded):
    from providers.services import clean_routing, set_routing

    opened = Provider.objects.get(pk=2)
    set_routing(opened, clean_routing(opened, cities=["Pune"]))

    response = admin_client.post(
        change_url("provider", 2), provider_post(opened, daily_cap_value="3")
    )

    assert "was changed by someone else" in errors_of(response)
    assert Provider.objects.get(pk=2).daily_cap is None
    assert Provider.objects.get(pk=2).cities == ["pune"]
