"""Webhook signing secrets encrypted at rest, under the keys of DELIVERY_SECRET_KEYS.

A stored secret is ``enc1:`` and a Fernet token (AES-128-CBC with an HMAC-SHA256, from
``cryptography``) of the clear ``whsec_...`` secret. The prefix tells a stored value apart from
a clear one, and names the format should it ever change. The first key encrypts; every key
decrypts, so keys rotate by putting a new one in front (docs/DELIVERY.md).

Not named ``secrets``: delivery/models.py imports the standard library's module of that name.
"""

from __future__ import annotations

import functools

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

PREFIX = "enc1:"


class UndecryptableSecret(Exception):
    """A stored secret that none of DELIVERY_SECRET_KEYS decrypts: its key was removed."""


@functools.cache
def _fernets(keys: tuple[str, ...]) -> tuple[Fernet, MultiFernet]:
    """The first key alone (to tell what is already under it), and all keys."""
    fernets = [Fernet(key) for key in keys]
    return fernets[0], MultiFernet(fernets)


def _keys() -> tuple[Fernet, MultiFernet]:
    # Read on every call, not at import: tests change the keys through the settings fixture.
    return _fernets(tuple(settings.DELIVERY_SECRET_KEYS))


def is_encrypted(stored: str) -> bool:
    return stored.startswith(PREFIX)


def encrypt_secret(clear: str) -> str:
    """The value to store for the clear secret ``clear``, encrypted with the first key."""
    _, every = _keys()
    return PREFIX + every.encrypt(clear.encode()).decode()


def decrypt_secret(stored: str) -> str:
    """The clear secret of a stored value, under any key; raise UndecryptableSecret otherwise.

    A value without the prefix is returned as it is: a secret stored in clear by a process
    still running the code from before encryption (a rolling deploy), which
    rotate_delivery_secret_keys encrypts.
    """
    if not is_encrypted(stored):
        return stored
    _, every = _keys()
    try:
        return every.decrypt(stored.removeprefix(PREFIX).encode()).decode()
    except InvalidToken as exc:
        raise UndecryptableSecret("no key of DELIVERY_SECRET_KEYS decrypts it") from exc


def needs_reencryption(stored: str) -> bool:
    """Whether a stored secret is in clear or under a key other than the first."""
    if not is_encrypted(stored):
        return True
    first, _ = _keys()
    try:
        first.decrypt(stored.removeprefix(PREFIX).encode())
    except InvalidToken:
        return True
    return False


def reencrypt_secret(stored: str) -> str:
    """The stored value again, encrypted with the first key (UndecryptableSecret if no key
    decrypts it)."""
    return encrypt_secret(decrypt_secret(stored))
