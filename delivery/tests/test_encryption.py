"""Signing secrets at rest (delivery/encryption.py): what the column holds, signing with the
decrypted secret, key rotation and its command, the migration that encrypts old rows, and an
attempt whose secret no key decrypts."""

from __future__ import annotations

import importlib
from io import StringIO

import pytest
from cryptography.fernet import Fernet
from django.apps import apps
from django.core.management import CommandError, call_command
from django.db import connection
from standardwebhooks import Webhook

from delivery.encryption import UndecryptableSecret, decrypt_secret, encrypt_secret
from delivery.endpoints import set_endpoint
from delivery.models import Delivery, Endpoint
from delivery.queue import claim, register_worker
from delivery.tests.support import attempt_now, plain_endpoint, submit
from webhooks.signing import signature_headers

migration = importlib.import_module("delivery.migrations.0003_encrypt_endpoint_secrets")

OLD_KEY = Fernet.generate_key().decode()
NEW_KEY = Fernet.generate_key().decode()


@pytest.fixture
def old_key(settings):
    settings.DELIVERY_SECRET_KEYS = [OLD_KEY]
    return settings


def stored_secrets() -> dict[int, str]:
    """provider id -> the secret column as PostgreSQL holds it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT provider_id, secret FROM delivery_endpoint ORDER BY provider_id")
        return dict(cursor.fetchall())


@pytest.mark.django_db
def test_set_endpoint_stores_the_secret_encrypted_and_returns_it_in_clear(seeded, settings):
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = True

    change = set_endpoint(seeded.provider(1), url="http://127.0.0.1:9/hook")

    stored = stored_secrets()[1]
    assert change.new_secret.startswith("whsec_")
    assert stored.startswith("enc1:")
    assert change.new_secret not in stored
    assert change.new_secret.removeprefix("whsec_") not in stored
    assert Endpoint.objects.get().signing_secret == change.new_secret


@pytest.mark.django_db
def test_an_attempt_signs_with_the_decrypted_secret_the_provider_was_shown(seeded, settings):
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = True
    shown = set_endpoint(seeded.provider(1), url="http://127.0.0.1:9/hook").new_secret
    delivery = submit(1, 1).deliveries.get(provider_id=1)

    [send] = claim(register_worker(), take=1).sends

    assert send.secret == shown
    # Signed as post_webhook signs it, verified as the provider does with what it was shown.
    headers = signature_headers(send.body, secret=send.secret, msg_id=str(delivery.pk))
    assert Webhook(shown).verify(send.body, headers)["lead"]["id"] == delivery.lead_id


def test_a_secret_under_the_old_key_decrypts_once_a_new_key_is_in_front(old_key):
    stored = encrypt_secret("whsec_c2VjcmV0")

    old_key.DELIVERY_SECRET_KEYS = [NEW_KEY, OLD_KEY]

    assert decrypt_secret(stored) == "whsec_c2VjcmV0"
    assert Fernet(NEW_KEY.encode()).decrypt(
        encrypt_secret("whsec_c2VjcmV0").removeprefix("enc1:").encode()
    )  # and new secrets are encrypted with the new key


def test_a_secret_under_a_removed_key_is_refused_not_misread(old_key):
    stored = encrypt_secret("whsec_c2VjcmV0")

    old_key.DELIVERY_SECRET_KEYS = [NEW_KEY]

    with pytest.raises(UndecryptableSecret):
        decrypt_secret(stored)


@pytest.mark.django_db
def test_the_rotate_command_reencrypts_with_the_new_key_and_then_changes_nothing(seeded, old_key):
    first = plain_endpoint(1, url="https://p1.example/h")
    plain_endpoint(2, email="two@example.com")
    third = plain_endpoint(3, url="https://p3.example/h")
    clear = {1: first.signing_secret, 3: third.signing_secret}
    old_key.DELIVERY_SECRET_KEYS = [NEW_KEY, OLD_KEY]

    call_command("rotate_delivery_secret_keys", stdout=(out := StringIO()))
    after_first_run = stored_secrets()
    call_command("rotate_delivery_secret_keys", stdout=(again := StringIO()))

    assert "Re-encrypted 2 signing secret(s)" in out.getvalue()
    assert "Re-encrypted 0 signing secret(s)" in again.getvalue()
    assert stored_secrets() == after_first_run  # idempotent: the second run wrote nothing
    assert after_first_run[2] == ""  # an email-only endpoint has no secret to encrypt
    old_key.DELIVERY_SECRET_KEYS = [NEW_KEY]  # the old key can go now
    assert {pk: e.signing_secret for pk, e in Endpoint.objects.in_bulk([1, 3]).items()} == clear


@pytest.mark.django_db
def test_the_rotate_command_changes_nothing_when_a_secret_is_under_no_key(seeded, old_key):
    plain_endpoint(1, url="https://p1.example/h")
    before = stored_secrets()
    old_key.DELIVERY_SECRET_KEYS = [NEW_KEY]  # the old key removed before rotating

    with pytest.raises(CommandError, match="decrypts the secret of provider #1"):
        call_command("rotate_delivery_secret_keys", stdout=StringIO())

    assert stored_secrets() == before


@pytest.mark.django_db
def test_the_rotate_command_encrypts_a_secret_stored_in_clear(seeded, old_key):
    # As a process still running the code from before encryption writes it (a rolling deploy).
    plain_endpoint(1, url="https://p1.example/h")
    Endpoint.objects.update(secret="whsec_Y2xlYXI=")

    call_command("rotate_delivery_secret_keys", stdout=StringIO())

    assert stored_secrets()[1].startswith("enc1:")
    assert Endpoint.objects.get().signing_secret == "whsec_Y2xlYXI="


@pytest.mark.django_db
def test_the_migration_encrypts_clear_secrets_and_its_reverse_decrypts_them(seeded, old_key):
    plain_endpoint(1, url="https://p1.example/h")
    Endpoint.objects.filter(provider_id=1).update(secret="whsec_Y2xlYXI=")
    already = plain_endpoint(2, url="https://p2.example/h").secret
    plain_endpoint(3, email="three@example.com")

    migration.encrypt_clear_secrets(apps, connection.schema_editor())
    encrypted = stored_secrets()
    migration.decrypt_secrets(apps, connection.schema_editor())
    decrypted = stored_secrets()

    assert encrypted[1].startswith("enc1:")
    assert decrypt_secret(encrypted[1]) == "whsec_Y2xlYXI="
    assert encrypted[2] == already  # encrypted before: left as it was
    assert encrypted[3] == ""
    assert decrypted == {1: "whsec_Y2xlYXI=", 2: decrypt_secret(already), 3: ""}


def test_an_attempt_whose_secret_is_under_no_key_fails_with_the_reason_and_is_retried(
    transactional_db, seeded_tx, old_key
):
    old_key.DELIVERY_RETRY_BASE_SECONDS = 60
    plain_endpoint(1, url="https://p1.example/hook")
    row = Delivery.objects.get(lead=submit(1, 1))
    old_key.DELIVERY_SECRET_KEYS = [NEW_KEY]  # the old key removed too early

    status = attempt_now(row.pk)

    row.refresh_from_db()
    assert status == "retrying"
    assert row.last_error == "the signing secret is under no key of DELIVERY_SECRET_KEYS"
