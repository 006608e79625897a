"""Fixtures for the webhook tests: payload samples, the secret and a poster."""

from __future__ import annotations

import pytest

import webhooks.api
from webhooks.tests.helpers import SECRET


@pytest.fixture(autouse=True)
def unsigned_webhook(settings):
    """By default the webhook takes unsigned calls (no secret, as in development)."""
    settings.WEBHOOK_SECRET = ""


@pytest.fixture
def webhook_secret(settings, unsigned_webhook) -> str:
    settings.WEBHOOK_SECRET = SECRET
    return SECRET


@pytest.fixture
def fresh_unsigned_warning(monkeypatch):
    """Forget that this process already warned about unsigned calls."""
    monkeypatch.setattr(webhooks.api, "_unsigned_warned", False)
