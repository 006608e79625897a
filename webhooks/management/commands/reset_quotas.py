"""Reset provider quotas through the webhook, as the payment gateway would.

Sends a real HTTP request to POST /api/webhook/reset-quota, signed with WEBHOOK_SECRET when
it is set, prints the answer and exits non-zero unless it is a 2xx. It writes nothing to the
database itself: quota is restored only through the webhook (SPEC §5).
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

from webhooks.signing import signature_headers


def default_url() -> str:
    return f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/api/webhook/reset-quota"


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
        if settings.WEBHOOK_SECRET:
            headers.update(signature_headers(payload, secret=settings.WEBHOOK_SECRET))
        url = options["url"] or default_url()

        try:
            response = httpx.post(url, content=payload, headers=headers, timeout=options["timeout"])
        except httpx.HTTPError as exc:
            raise CommandError(f"POST {url} failed: {exc}") from exc

        try:
            answer = json.dumps(response.json(), indent=2)
        except ValueError:
            answer = response.text
        self.stdout.write(f"POST {url} eventId={body['eventId']}")
        try:
            phrase = HTTPStatus(response.status_code).phrase
        except ValueError:
            phrase = response.reason_phrase
        self.stdout.write(f"{response.status_code} {phrase}")
        self.stdout.write(answer)
        if not response.is_success:
            raise CommandError(f"The webhook answered {response.status_code}.")
