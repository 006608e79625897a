"""Standard Webhooks signatures (standardwebhooks.org) for the quota-reset webhook.

Verification runs on the raw body bytes, before anything parses them. Signing is here for the
senders leaddist itself runs: `manage.py reset_quotas` and the test tools.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
# The secret `make run` gives the server when WEBHOOK_SECRET is not set (the Makefile's
# DEMO_WEBHOOK_SECRET): public, for local use only. With DEBUG off it is never used.
DEMO_WEBHOOK_SECRET = "whsec_bGVhZGRpc3QtZGVtby1zZWNyZXQtbG9jYWwtb25seSE="


class InvalidSignature(Exception):
    """The request is not signed with our secret, or not within the ±5 minute window."""


def verify_signature(body: bytes, headers: Mapping[str, str], *, secret: str) -> None:
    """Return if the headers sign exactly these bytes within ±5 minutes; else InvalidSignature."""
    present = {name: headers.get(name) or "" for name in SIGNATURE_HEADERS}
    try:
        Webhook(secret).verify(body, present, json_parse=False)
    except WebhookVerificationError as exc:
        raise InvalidSignature(str(exc)) from exc
    except (ValueError, TypeError) as exc:
        # The library lets a malformed webhook-signature header (no comma, bad base64) and a
        # body that is not UTF-8 escape as ValueError; neither can carry a valid signature.
        raise InvalidSignature("Malformed signature header or body.") from exc


def signature_headers(
    body: bytes, *, secret: str, msg_id: str | None = None, timestamp: datetime | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers that sign ``body`` with ``secret``."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    timestamp = timestamp or datetime.now(tz=UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, timestamp, body.decode()),
    }
