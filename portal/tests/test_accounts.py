"""Provider accounts: made by the command and the admin, signing in and out, rate limits."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.tokens import default_token_generator
from django.core.management import CommandError, call_command
from django.test import Client

from portal.models import ProviderUser
from portal.services import create_provider_user
from portal.tests.conftest import PROVIDER_PASSWORD

pytestmark = pytest.mark.django_db


def sign_in(client: Client, username: str, password: str, **extra):
    return client.post("/portal/login/", {"username": username, "password": password}, **extra)


def test_command_with_a_password_makes_a_non_staff_account_that_signs_in(seeded, monkeypatch):
    monkeypatch.setenv("PROVIDER_USER_PASSWORD", PROVIDER_PASSWORD)
    out = StringIO()

    call_command("create_provider_user", "4", "acme", "--email", "ops@acme.test", stdout=out)

    account = ProviderUser.objects.get(user__username="acme")
    assert account.provider_id == 4
    assert account.user.email == "ops@acme.test"
    assert not account.user.is_staff
    assert not account.user.is_superuser
    assert "link" not in out.getvalue()
    response = sign_in(Client(), "acme", PROVIDER_PASSWORD)
    assert response.status_code == 302
    assert response["Location"] == "/portal/"


def test_command_without_a_password_prints_a_one_time_link(seeded, monkeypatch):
    monkeypatch.delenv("PROVIDER_USER_PASSWORD", raising=False)
    out = StringIO()

    call_command("create_provider_user", "4", "acme", stdout=out)

    link = out.getvalue().strip().splitlines()[-1]
    assert re.fullmatch(r"http://127\.0\.0\.1:8000/portal/set-password/[^/]+/[^/]+/", link)
    client = Client()
    form_page = client.get(link.removeprefix("http://127.0.0.1:8000"), follow=True)
    assert form_page.context["validlink"] is True
    new_password = "a-long-fresh-password-7"
    done = client.post(
        form_page.redirect_chain[-1][0],
        {"new_password1": new_password, "new_password2": new_password},
    )
    assert done.status_code == 302
    assert done["Location"] == "/portal/login/"
    assert sign_in(Client(), "acme", new_password).status_code == 302
    again = Client().get(link.removeprefix("http://127.0.0.1:8000"), follow=True)
    assert again.context["validlink"] is False


def test_the_set_password_link_expires_after_72_hours(seeded, monkeypatch):
    created = create_provider_user(seeded.provider(4), username="acme")
    user = created.account.user
    token = created.set_password_path.rstrip("/").split("/")[-1]
    now = datetime.now()

    monkeypatch.setattr(default_token_generator, "_now", lambda: now + timedelta(hours=71))
    assert default_token_generator.check_token(user, token)
    monkeypatch.setattr(default_token_generator, "_now", lambda: now + timedelta(hours=73))
    assert not default_token_generator.check_token(user, token)
    page = Client().get(created.set_password_path, follow=True)
    assert page.context["validlink"] is False


def test_command_refuses_an_unknown_provider_and_a_taken_username(seeded, provider_account):
    with pytest.raises(CommandError, match="No provider with id 99"):
        call_command("create_provider_user", "99", "someone")
    with pytest.raises(CommandError, match="already exists"):
        call_command("create_provider_user", "4", "p2-owner")


def test_staff_create_and_deactivate_provider_users_in_the_admin(seeded, admin_client):
    response = admin_client.post(
        "/admin/portal/provideruser/add/",
        {"provider": "5", "username": "five", "email": "five@example.test"},
        follow=True,
    )

    account = ProviderUser.objects.get(user__username="five")
    assert account.provider_id == 5
    assert not account.user.is_staff
    shown = " ".join(str(m) for m in response.context["messages"])
    assert "/portal/set-password/" in shown

    admin_client.post(
        "/admin/portal/provideruser/",
        {"action": "deactivate_selected", "_selected_action": [account.pk]},
    )
    account.user.refresh_from_db()
    assert account.user.is_active is False


def test_a_deactivated_account_loses_its_session_and_cannot_sign_in(provider_account):
    client = Client()
    assert sign_in(client, "p2-owner", PROVIDER_PASSWORD).status_code == 302
    user = provider_account.user
    user.is_active = False
    user.save()

    assert client.get("/portal/")["Location"].startswith("/portal/login/")
    assert sign_in(Client(), "p2-owner", PROVIDER_PASSWORD).status_code == 200


def test_staff_and_plain_users_cannot_sign_in_to_the_portal(staff_user, plain_user, seeded):
    for username in ("operator", "visitor"):
        response = sign_in(Client(), username, "staff-pass-123")

        assert response.status_code == 200
        assert "not a provider account" in response.content.decode()
        assert "_auth_user_id" not in response.wsgi_request.session


def test_a_staff_session_gets_403_from_the_portal(staff_client, seeded):
    assert staff_client.get("/portal/").status_code == 403


def test_sign_in_rotates_the_session_key(provider_account):
    client = Client()
    client.get("/portal/login/")
    session = client.session
    session["planted"] = "yes"
    session.save()
    before = session.session_key

    sign_in(client, "p2-owner", PROVIDER_PASSWORD)

    assert client.session.session_key != before


def test_sign_in_needs_its_csrf_token(provider_account):
    client = Client(enforce_csrf_checks=True)

    assert sign_in(client, "p2-owner", PROVIDER_PASSWORD).status_code == 403


def test_sign_out_is_a_post_and_ends_the_session(provider_account):
    client = Client()
    sign_in(client, "p2-owner", PROVIDER_PASSWORD)

    assert client.get("/portal/logout/").status_code == 405
    assert client.post("/portal/logout/")["Location"] == "/portal/login/"
    assert client.get("/portal/")["Location"].startswith("/portal/login/")


def test_sign_in_sends_back_to_a_local_next_only(provider_account):
    local = sign_in(Client(), "p2-owner", PROVIDER_PASSWORD, QUERY_STRING="")
    assert local["Location"] == "/portal/"
    elsewhere = Client().post(
        "/portal/login/",
        {"username": "p2-owner", "password": PROVIDER_PASSWORD, "next": "https://evil.test/"},
    )
    assert elsewhere["Location"] == "/portal/"


def test_failed_sign_ins_are_limited_per_username_even_with_the_right_password(
    provider_account, settings
):
    settings.PORTAL_SIGN_IN_FAILURES_PER_USERNAME = "3/h"
    for n in range(3):
        client = Client(REMOTE_ADDR=f"10.0.0.{n}")
        assert sign_in(client, "p2-owner", "wrong").status_code == 200

    refused = sign_in(Client(REMOTE_ADDR="10.0.0.9"), "P2-Owner ", PROVIDER_PASSWORD)
    right = sign_in(Client(REMOTE_ADDR="10.0.0.9"), "p2-owner", PROVIDER_PASSWORD)

    assert refused.status_code == 429
    assert int(refused["Retry-After"]) > 0
    assert right.status_code == 429
    assert "_auth_user_id" not in right.wsgi_request.session


def test_failed_sign_ins_are_limited_per_client_across_usernames(provider_account, settings):
    settings.PORTAL_SIGN_IN_FAILURES_PER_CLIENT = "3/h"
    for n in range(3):
        assert sign_in(Client(), f"guess-{n}", "wrong").status_code == 200

    assert sign_in(Client(), "p2-owner", PROVIDER_PASSWORD).status_code == 429
    assert sign_in(Client(REMOTE_ADDR="10.9.9.9"), "p2-owner", PROVIDER_PASSWORD).status_code == 302


def test_successful_sign_ins_are_never_limited(provider_account, settings):
    settings.PORTAL_SIGN_IN_FAILURES_PER_USERNAME = "2/h"

    codes = {sign_in(Client(), "p2-owner", PROVIDER_PASSWORD).status_code for _ in range(5)}

    assert codes == {302}


def test_an_account_is_tied_to_one_provider(provider_account):
    assert get_user_model().objects.get(username="p2-owner").provider_account.provider_id == 2
    assert provider_account.actor == "provider:p2-owner"


def test_the_admin_refuses_an_invalid_or_taken_username_with_a_form_error(
    seeded, admin_client, provider_account
):
    for username in ("has space", "p2-owner"):
        response = admin_client.post(
            "/admin/portal/provideruser/add/", {"provider": "5", "username": username}
        )

        assert response.status_code == 200
        assert response.context["adminform"].form.errors["username"]
    assert ProviderUser.objects.count() == 1
