"""Schema-driven fuzzing of every API operation with schemathesis (pinned in requirements-dev).

Each operation of /api/openapi.json gets a bounded, derandomized set of generated requests,
valid and invalid, sent through the WSGI app on a seeded database with a valid API key. Every
answer must be a declared status code with a body that matches its declared schema, and none
may be a 5xx. Runs in about a minute on two cores.
"""

from __future__ import annotations

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings

from allocation.services import create_api_key
from leaddist.api import api
from providers.services import seed_catalogue

EXAMPLES_PER_OPERATION = 40


@pytest.fixture
def auth_headers(db, settings):
    seed_catalogue()
    # Unsigned webhook calls are accepted only without a secret, so the fuzzer reaches the
    # webhook's own checks; the signature itself is tested in webhooks/tests/.
    settings.WEBHOOK_SECRET = ""
    # Limits would soon answer every call with 429 and hide what lies behind them.
    settings.RATE_LIMIT_PER_KEY = "0"
    _, raw = create_api_key(name="fuzzer")
    return {"Authorization": f"Bearer {raw}"}


@pytest.fixture(autouse=True)
def inside_the_test_transaction(db):
    """Keep the app's requests in the test's transaction, as Django's own test client does."""
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    yield
    for signal in (request_started, request_finished):
        signal.connect(close_old_connections)


# Loaded when the module is collected, from the same schema /api/openapi.json serves (which
# itself needs a credential). schemathesis' lazy fixture loader does not run on pytest 9.
schema = schemathesis.openapi.from_dict(api.get_openapi_schema())
schema.app = get_wsgi_application()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_every_operation_answers_as_its_schema_declares(case, auth_headers):
    case.call_and_validate(headers=auth_headers)
