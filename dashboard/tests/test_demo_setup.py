"""`demo_setup` (run by `make run` on every start) creates the demo login and key only when they
are missing, and never changes a password nor revokes a key."""

from __future__ import annotations

import json
import re
import subprocess
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from allocation.models import Lead
from credentials.models import ApiKey
from credentials.services import revoke_api_keys


def run(command: str, *args: str) -> str:
    out = StringIO()
    call_command(command, *args, stdout=out)
    return out.getvalue()


def last_line(output: str) -> str:
    return output.strip().splitlines()[-1]


def try_it(output: str) -> str:
    """The shell lines of the "Try it" sample, as printed."""
    lines = output.split("Try it from any shell")[1].splitlines()[1:]
    return "\n".join(line.strip() for line in lines if line.startswith("    "))


@pytest.fixture
def debug(settings):
    settings.DEBUG = True
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return settings


@pytest.mark.django_db
def test_first_run_creates_a_staff_login_and_prints_a_working_key_last(client, seeded, debug):
    output = run("demo_setup")

    user = get_user_model().objects.get(username="admin")
    raw = last_line(output)
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
    assert f"export LEADDIST_API_KEY={raw}" in output
    assert response.status_code == 201
    assert ApiKey.objects.get(key_hash=ApiKey.hash_key(raw)).name == "demo"


@pytest.mark.django_db
def test_a_restart_keeps_the_password_and_the_key_in_use(client, seeded, debug):
    first_key = last_line(run("demo_setup"))
    admin = get_user_model().objects.get(username="admin")
    admin.set_password("changed-by-the-operator")
    admin.save()

    output = run("demo_setup")

    admin.refresh_from_db()
    assert admin.check_password("changed-by-the-operator")
    assert not re.search(r"Password:\s+admin", output)
    assert "Password:       unchanged" in output
    assert ApiKey.objects.filter(name="demo").count() == 1
    assert ApiKey.objects.get(key_hash=ApiKey.hash_key(first_key)).revoked_at is None
    assert first_key not in output
    response = client.get("/api/providers", HTTP_AUTHORIZATION=f"Bearer {first_key}")
    assert response.status_code == 200


@pytest.mark.django_db
def test_a_restart_says_how_to_make_a_new_key_as_the_old_one_cannot_be_shown(seeded, debug):
    key = last_line(run("demo_setup"))

    output = run("demo_setup")

    assert f'API key "demo" ({key[:9]}…): made by an earlier run; it still works' in output
    assert "cannot be shown again" in output
    assert "manage.py create_api_key NAME" in output
    assert "export LEADDIST_API_KEY=$(.venv/bin/python manage.py create_api_key demo" in output
    assert not last_line(output).startswith("ld_")


@pytest.mark.django_db
def test_a_new_demo_key_is_made_only_when_none_is_usable(seeded, debug):
    first = last_line(run("demo_setup"))
    revoke_api_keys(ApiKey.objects.filter(name="demo"))  # e.g. in the admin

    second = last_line(run("demo_setup"))

    assert second.startswith("ld_")
    assert second != first
    usable = ApiKey.objects.usable().filter(name="demo")
    assert [key.key_hash for key in usable] == [ApiKey.hash_key(second)]


@pytest.mark.django_db
def test_an_existing_admin_is_left_as_it_is(seeded, debug):
    get_user_model().objects.create_user(username="admin", password="mine", is_staff=True)

    run("demo_setup")

    admin = get_user_model().objects.get(username="admin")
    assert admin.check_password("mine")
    assert not admin.is_superuser
    assert get_user_model().objects.filter(username="admin").count() == 1


@pytest.mark.django_db
def test_demo_setup_leaves_other_keys_alone(seeded, debug):
    call_command("create_api_key", "crm", stdout=StringIO())

    run("demo_setup")
    run("demo_setup")

    assert ApiKey.objects.usable().filter(name="crm").count() == 1


@pytest.mark.django_db
def test_the_password_comes_from_the_environment_when_the_user_is_created(
    seeded, debug, monkeypatch
):
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


@pytest.mark.django_db(transaction=True)
def test_the_printed_curl_works_again_after_a_restart(
    seeded_tx, debug, asgi_server_factory, monkeypatch
):
    server = asgi_server_factory()
    monkeypatch.setenv("PORT", server.url.rsplit(":", 1)[1])
    sample = try_it(run("demo_setup"))

    answers = [
        subprocess.run(
            ["bash", "-c", sample], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        for _ in range(2)
    ]

    statuses = [answer.split()[1] for answer in answers]
    assert statuses == ["201", "201"], answers
    bodies = [json.loads(answer.split("\n\n", 1)[1]) for answer in answers]
    assert bodies[0]["id"] != bodies[1]["id"]
    assert Lead.objects.count() == 2
