"""`allocate_waiting` drains the waiting queue; `demo_setup` prepares a local demo login and key."""

import re
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from allocation.models import ApiKey, Lead
from allocation.services import LeadInput, submit_lead
from providers.models import Provider


def lead_for(service_id, n):
    return LeadInput(service_id=service_id, name="Ada", phone=f"+1555{n:07d}", city="London")


def statuses(*leads):
    return [Lead.objects.get(pk=lead.pk).status for lead in leads]


def run(command, **options):
    out = StringIO()
    call_command(command, stdout=out, **options)
    return out.getvalue()


# --- allocate_waiting --------------------------------------------------------------------------


@pytest.mark.django_db
def test_allocate_waiting_serves_the_oldest_lead_first_when_capacity_returns(seeded):
    seeded.providers(2, 3, 4).update(remaining_quota=0)
    first, second = submit_lead(lead_for(1, 1)), submit_lead(lead_for(1, 2))
    # Enough for exactly one more lead of service 1 (P1 plus two pool providers).
    seeded.providers(2, 3).update(remaining_quota=1)

    output = run("allocate_waiting")

    assert statuses(first, second) == ["allocated", "waiting"]
    assert list(first.allocations.order_by("rank").values_list("provider_id", flat=True)) == [
        1,
        2,
        3,
    ]
    assert "Allocated 1 waiting lead(s)." in output


@pytest.mark.django_db
def test_allocate_waiting_drains_every_service_in_order_of_arrival(seeded):
    seeded.providers(2, 3, 4, 6, 7, 8).update(remaining_quota=0)
    leads = [submit_lead(lead_for(service, n)) for n, service in enumerate([1, 2, 1, 2])]
    Provider.objects.update(remaining_quota=10)

    output = run("allocate_waiting")

    assert statuses(*leads) == ["allocated"] * 4
    allocated_order = Lead.objects.order_by("allocated_at", "pk").values_list("pk", flat=True)
    assert list(allocated_order) == [lead.pk for lead in leads]
    assert "Allocated 4 waiting lead(s)." in output


@pytest.mark.django_db
def test_allocate_waiting_with_nothing_to_do_allocates_nothing(seeded):
    assert "Allocated 0 waiting lead(s)." in run("allocate_waiting")


@pytest.mark.django_db
def test_allocate_waiting_leaves_leads_waiting_while_capacity_is_short(seeded):
    seeded.providers(2, 3, 4).update(status="paused")
    lead = submit_lead(lead_for(1, 1))

    run("allocate_waiting")

    assert statuses(lead) == ["waiting"]


# --- demo_setup --------------------------------------------------------------------------------


@pytest.fixture
def debug(settings):
    settings.DEBUG = True
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return settings


@pytest.mark.django_db
def test_demo_setup_creates_a_staff_login_and_prints_a_working_key(client, seeded, debug):
    output = run("demo_setup")

    user = get_user_model().objects.get(username="admin")
    raw = output.strip().splitlines()[-1]
    response = client.post(
        "/api/leads",
        {"name": "Ada", "phone": "+15550100", "city": "Paris", "service": 1},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )
    assert user.is_staff
    assert user.is_superuser
    assert user.check_password("admin")
    assert "http://127.0.0.1:8000/admin/login/" in output
    assert re.search(r"Username:\s+admin", output)
    assert re.search(r"Password:\s+admin", output)
    assert response.status_code == 201
    assert ApiKey.objects.get(key_hash=ApiKey.hash_key(raw)).name == "demo"


@pytest.mark.django_db
def test_demo_setup_again_keeps_one_user_and_one_usable_demo_key(seeded, debug):
    first = run("demo_setup").strip().splitlines()[-1]

    second = run("demo_setup").strip().splitlines()[-1]

    assert get_user_model().objects.filter(username="admin").count() == 1
    usable = ApiKey.objects.usable().filter(name="demo")
    assert [key.key_hash for key in usable] == [ApiKey.hash_key(second)]
    assert ApiKey.objects.get(key_hash=ApiKey.hash_key(first)).revoked_at is not None


@pytest.mark.django_db
def test_demo_setup_leaves_other_keys_alone(seeded, debug):
    call_command("create_api_key", "crm", stdout=StringIO())

    run("demo_setup")

    assert ApiKey.objects.usable().filter(name="crm").count() == 1


@pytest.mark.django_db
def test_demo_setup_takes_the_password_from_the_environment(seeded, debug, monkeypatch):
    monkeypatch.setenv("DEMO_ADMIN_PASSWORD", "s3cret-demo")

    output = run("demo_setup")

    assert get_user_model().objects.get(username="admin").check_password("s3cret-demo")
    assert "s3cret-demo" in output


@pytest.mark.django_db
def test_demo_setup_prints_the_webhook_secret_when_set(seeded, debug):
    debug.WEBHOOK_SECRET = "whsec_dGVzdHNlY3JldA=="

    output = run("demo_setup")

    assert "whsec_dGVzdHNlY3JldA==" in output


@pytest.mark.django_db
def test_demo_setup_refuses_to_run_with_debug_off(seeded, settings):
    settings.DEBUG = False

    with pytest.raises(CommandError, match="local use only"):
        run("demo_setup")

    assert not get_user_model().objects.filter(username="admin").exists()
    assert not ApiKey.objects.exists()
