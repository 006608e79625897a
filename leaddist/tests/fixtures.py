"""Fixtures shared by the tests of every app: staff and non-staff users, and a real ASGI server."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from dashboard.tests.support import STAFF_PASSWORD
from leaddist.tests.asgi_server import asgi_server_factory  # noqa: F401 (a fixture)


@pytest.fixture
def staff_user(db):
    return get_user_model().objects.create_user(
        username="operator", password=STAFF_PASSWORD, is_staff=True
    )


@pytest.fixture
def plain_user(db):
    return get_user_model().objects.create_user(username="visitor", password=STAFF_PASSWORD)


@pytest.fixture
def staff_client(staff_user) -> Client:
    client = Client()
    client.force_login(staff_user)
    return client


@pytest.fixture
def plain_client(plain_user) -> Client:
    client = Client()
    client.force_login(plain_user)
    return client
