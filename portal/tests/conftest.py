"""Fixtures of the portal's tests: provider accounts and their signed-in clients."""

from __future__ import annotations

import pytest
from django.test import Client

from portal.services import create_provider_user

PROVIDER_PASSWORD = "provider-pass-123"


@pytest.fixture
def provider_account(seeded):
    """The portal account of seeded provider 2."""
    return create_provider_user(
        seeded.provider(2), username="p2-owner", password=PROVIDER_PASSWORD
    ).account


@pytest.fixture
def other_account(seeded):
    """The portal account of seeded provider 3."""
    return create_provider_user(
        seeded.provider(3), username="p3-owner", password=PROVIDER_PASSWORD
    ).account


@pytest.fixture
def provider_client(provider_account) -> Client:
    client = Client()
    client.force_login(provider_account.user)
    return client
