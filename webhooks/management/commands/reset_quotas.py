"""Reset provider quotas through the webhook, as the payment gateway would.

Sends a real HTTP request to POST /api/webhook/reset-quota, prints the answer and exits
non-zero unless it is a 2xx. It writes nothing to the database itself: quota is restored only
through the webhook (SPEC §5).

The request is signed with WEBHOOK_SECRET. With DEBUG on (local use) and no WEBHOOK_SECRET, it
is signed with the demo secret that `make run` gives the server, so the command works from a
fresh shell against `make run`; a server without any secret accepts it too. The URL is
http://127.0.0.1:$PORT/api/webhook/reset-quota, PORT defaulting to 8000 as for `make run`.
"""

from __future__ import annotations

import json
import os
import uuid
from argparse import ArgumentParser
from http import HTTPStatus
from typing import Any

import httpx
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from webhooks.signing import DEMO_WEBHOOK_SECRET, signature_headers


def default_url() -> str:
    return f"http://127.0.0.1:{os.environ.get('PORT') or '8000'}/api/webhook/reset-quota"


def signing_secret() -> tuple[str, str]:
    """The secret to sign with, and where it comes from."""
    if settings.WEBHOOK_SECRET:
        return settings.WEBHOOK_SECRET, "WEBHOOK_SECRET"
    if settings.DEBUG:
        return DEMO_WEBHOOK_SECRET, "the demo secret of `make run` (DEBUG on, no WEBHOOK_SECRET)"
    return "", "nothing: no WEBHOOK_SECRET"


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--event-id", help="The eventId (the idempotency key). Default: a new UUID."
        )
        parser.add_argument(
            "--provider",
            type=int,
            action="append",
            dest="providers",
            metavar="ID",
            help="Reset only this provider; repeat for several. Default: every provider.",
        )
        parser.add_argument("--url", default=None, help=f"Webhook URL. Default: {default_url()}")
        parser.add_argument("--timeout", type=float, default=30.0, help="Seconds (default 30).")

    def handle(self, *args: Any, **options: Any) -> None:
        body: dict[str, Any] = {"eventId": options["event_id"] or str(uuid.uuid4())}
        if options["providers"]:
            body["providerIds"] = options["providers"]
        payload = json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        secret, secret_source = signing_secret()
        if secret:
            headers.update(signature_headers(payload, secret=secret))
        url = options["url"] or default_url()

        try:
            response = httpx.post(url, content=payload, headers=headers, timeout=options["timeout"])
        except httpx.HTTPError as exc:
            raise CommandError(
                f"POST {url} failed: {exc}. Is the server running there? Set PORT (as given to "
                "`make run`) or pass --url."
            ) from exc

        try:
            answer = json.dumps(response.json(), indent=2)
        except ValueError:
            answer = response.text
        self.stdout.write(f"POST {url} eventId={body['eventId']}, signed with {secret_source}")
        try:
            phrase = HTTPStatus(response.status_code).phrase
        except ValueError:
            phrase = response.reason_phrase
        self.stdout.write(f"{response.status_code} {phrase}")
        self.stdout.write(answer)
        if response.status_code == HTTPStatus.UNAUTHORIZED:
            raise CommandError(
                "The webhook answered 401: the server's WEBHOOK_SECRET is not the secret this "
                "command signed with. Export the server's WEBHOOK_SECRET and run it again."
            )
        if not response.is_success:
            raise CommandError(f"The webhook answered {response.status_code}.")
