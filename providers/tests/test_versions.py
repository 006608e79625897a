"""Catalogue versions: PostgreSQL counts catalogue edits, whoever writes them, and nothing else."""

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from providers.models import Membership, Provider, Service
from providers.services import (
    EditConflict,
    MembershipEdit,
    check_memberships,
    pause_provider,
    remove_memberships,
    save_memberships,
    update_provider,
    update_service,
)

pytestmark = pytest.mark.django_db


def version(model, pk):
    return model.objects.values_list("version", flat=True).get(pk=pk)


def membership(service_id, provider_id):
    return Membership.objects.get(service_id=service_id, provider_id=provider_id)


def test_new_rows_start_at_version_1(seeded):
    assert set(Provider.objects.values_list("version", flat=True)) == {1}
    assert set(Service.objects.values_list("version", flat=True)) == {1}
    assert set(Membership.objects.values_list("version", flat=True)) == {1}


def test_every_catalogue_edit_of_a_provider_moves_its_version_once(seeded):
    update_provider(seeded.provider(1), name="Acme")
    pause_provider(seeded.provider(1))
    saved = update_provider(seeded.provider(1), quota=20, status="active")

    assert saved.version == 4
    assert version(Provider, 1) == 4


def test_bulk_updates_and_raw_sql_move_the_version_too(seeded):
    Provider.objects.filter(pk__in=[1, 2]).update(status="paused")
    Service.objects.filter(pk=1).update(name="Plumbing")
    Membership.objects.filter(service_id=1, provider_id=4).update(position=9)

    assert [version(Provider, 1), version(Provider, 2), version(Provider, 3)] == [2, 2, 1]
    assert version(Service, 1) == 2
    assert membership(1, 4).version == 2


def test_a_write_that_changes_nothing_editable_keeps_the_version(seeded):
    provider = seeded.provider(1)
    provider.save()  # every column, the same values
    Provider.objects.filter(pk=1).update(status="active")

    assert version(Provider, 1) == 1


def test_a_stale_instance_saved_cannot_move_the_version_back(seeded):
    stale = seeded.provider(1)
    update_provider(seeded.provider(1), name="Acme")
    update_provider(seeded.provider(1), name="Acme 2")

    stale.name = "Acme 2"
    stale.save()  # writes version = 1
    Provider.objects.filter(pk=1).update(version=1)

    assert version(Provider, 1) == 3


def test_update_provider_refuses_an_expected_version_that_moved(seeded):
    pause_provider(seeded.provider(8))

    with pytest.raises(EditConflict) as excinfo:
        update_provider(seeded.provider(8), name="Acme", status="active", expected_version=1)

    message = " ".join(excinfo.value.messages)
    assert "Provider “Provider 8” was changed by someone else" in message
    assert "status: yours “active”, now “paused”" in message
    assert Provider.objects.filter(pk=8).values_list("name", "status", "version").get() == (
        "Provider 8",
        "paused",
        2,
    )


def test_update_provider_writes_only_the_fields_given(seeded):
    with CaptureQueriesContext(connection) as queries:
        update_provider(seeded.provider(1), name="Acme", expected_version=1)

    updates = [q["sql"] for q in queries if q["sql"].startswith('UPDATE "providers_provider"')]
    assert len(updates) == 1
    assert '"name" =' in updates[0]
    assert '"status" =' not in updates[0]
    assert '"quota" =' not in updates[0]


def test_update_service_refuses_a_stale_version_and_checks_its_fields(seeded):
    update_service(seeded.service(1), active=False)

    with pytest.raises(EditConflict, match="active: yours “yes”, now “no”"):
        update_service(seeded.service(1), name="Plumbing", active=True, expected_version=1)
    with pytest.raises(ValidationError):
        update_service(seeded.service(1), slug="not a slug")
    assert Service.objects.filter(pk=1).values_list("name", "active", "version").get() == (
        "Service 1",
        False,
        2,
    )


def test_save_memberships_updates_one_row_and_inserts_another_in_one_go(seeded):
    p4 = membership(1, 4)

    saved = save_memberships(
        seeded.service(1),
        [
            MembershipEdit(p4.pk, {"position": 5}, seen_version=1),
            MembershipEdit(None, {"provider_id": 6, "role": "pool", "position": 4}),
        ],
    )

    assert [(row.provider_id, changed) for row, changed in saved.changed] == [(4, ["position"])]
    assert [row.provider_id for row in saved.created] == [6]
    assert membership(1, 4).position == 5
    assert membership(1, 4).version == 2
    assert membership(1, 6).provider_eligible is True


def test_save_memberships_refuses_a_row_edited_since_and_writes_nothing(seeded):
    p4 = membership(1, 4)
    save_memberships(seeded.service(1), [MembershipEdit(p4.pk, {"position": 7})])

    with pytest.raises(EditConflict) as excinfo:
        save_memberships(
            seeded.service(1),
            [
                MembershipEdit(p4.pk, {"role": "pool", "position": 3}, seen_version=1),
                MembershipEdit(None, {"provider_id": 6, "role": "pool", "position": 4}),
            ],
        )

    assert "The membership of Provider 4" in excinfo.value.messages[0]
    assert "position: yours “3”, now “7”" in excinfo.value.messages[0]
    assert not Membership.objects.filter(service_id=1, provider_id=6).exists()


def test_a_membership_removed_meanwhile_is_a_conflict_unless_it_was_being_removed(seeded):
    p4 = membership(1, 4)
    remove_memberships([p4.pk])

    with pytest.raises(EditConflict, match="was removed by someone else"):
        check_memberships(seeded.service(1), [MembershipEdit(p4.pk, {"position": 5})])
    check_memberships(seeded.service(1), [MembershipEdit(p4.pk, delete=True, seen_version=1)])


def test_save_memberships_checks_the_whole_result_against_spec_rules(seeded):
    with pytest.raises(ValidationError, match="Pool position 2 is given to"):
        save_memberships(
            seeded.service(1),
            [MembershipEdit(None, {"provider_id": 5, "role": "pool", "position": 2})],
        )
    with pytest.raises(ValidationError, match="a swap needs two saves"):
        save_memberships(
            seeded.service(1),
            [
                MembershipEdit(membership(1, 2).pk, {"position": 2}),
                MembershipEdit(membership(1, 3).pk, {"position": 1}),
            ],
        )


def test_removals_are_applied_before_changes_and_new_rows(seeded):
    save_memberships(
        seeded.service(1),
        [
            MembershipEdit(None, {"provider_id": 5, "role": "pool", "position": 3}),
            MembershipEdit(membership(1, 3).pk, {"position": 4}),
            MembershipEdit(membership(1, 4).pk, delete=True),
        ],
    )

    assert sorted(
        Membership.objects.filter(service_id=1).values_list("role", "position", "provider_id")
    ) == [("mandatory", 1, 1), ("pool", 1, 2), ("pool", 3, 5), ("pool", 4, 3)]
