"""Schema-driven fuzzing of every API operation with schemathesis (pinned in requirements-dev).

Each operation of /api/openapi.json gets a bounded, derandomized set of generated requests,
valid and invalid, sent through the WSGI app on a seeded database with a valid API key. Every
answer must be a declared status code with a body that matches its declared schema, and none
may be a 5xx. Runs in well under a minute on two cores.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from credentials.models import ApiKey
from leaddist.api import api
from providers.services import seed_catalogue

# Enough for CI; FUZZ_EXAMPLES=1000 digs deeper locally.
EXAMPLES_PER_OPERATION = int(os.environ.get("FUZZ_EXAMPLES", "100"))
FUZZ_KEY = "ld_fuzzing-key-for-tests-only"
# Operations whose schema-valid requests may still be refused with 422, for reasons no JSON
# schema can state: an unknown service or provider id, a phone without 7-15 digits, an event
# id already used with another body. Every other check still runs on them.
SEMANTIC_422 = {
    "submit_lead",
    "request_service",
    "list_leads",
    "webhooks_api_reset_quota",
    "forecast_service",
}

# Loaded when the module is collected, from the same schema /api/openapi.json serves (which
# itself needs a credential). schemathesis' lazy fixture loader does not run on pytest 9.
schema = schemathesis.openapi.from_dict(api.get_openapi_schema())
schema.app = get_wsgi_application()


@schema.auth()
class ApiKeyAuth:
    """The fuzzer's requests carry a valid key, except those testing its absence."""

    def get(self, case, context):
        return FUZZ_KEY

    def set(self, case, data, context):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@pytest.fixture(autouse=True)
def fuzzing_database(db, settings):
    seed_catalogue()
    ApiKey.objects.create(
        name="fuzzer", key_prefix=FUZZ_KEY[:10], key_hash=ApiKey.hash_key(FUZZ_KEY)
    )
    # Unsigned webhook calls are accepted only without a secret, so the fuzzer reaches the
    # webhook's own checks; the signature itself is tested in webhooks/tests/.
    settings.WEBHOOK_SECRET = ""
    # Limits would soon answer every call with 429 and hide what lies behind them.
    settings.RATE_LIMIT_PER_KEY = "0"
    # Keep the app's requests in the test's transaction, as Django's own test client does.
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    yield
    for signal in (request_started, request_finished):
        signal.connect(close_old_connections)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_every_operation_answers_as_its_schema_declares(case):
    excluded = []
    if case.operation.definition.raw.get("operationId") in SEMANTIC_422:
        excluded.append(positive_data_acceptance)

    case.call_and_validate(excluded_checks=excluded)
