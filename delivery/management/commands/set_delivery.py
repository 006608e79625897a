"""Set a provider's delivery endpoint: webhook URL (https) and/or email.

    manage.py set_delivery PROVIDER_ID [--url URL] [--email ADDRESS] [--clear] [--rotate-secret]

A URL gets a Standard Webhooks signing secret if it has none; a new or rotated secret is
printed once, as the last line of the output.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from delivery.endpoints import set_endpoint
from delivery.guard import UnsafeTarget
from providers.management import provider_named


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("provider_id", type=int)
        parser.add_argument("--url", help="webhook URL (https); empty string removes it")
        parser.add_argument("--email", help="email address; empty string removes it")
        parser.add_argument("--clear", action="store_true", help="remove URL, email and secret")
        parser.add_argument(
            "--rotate-secret", action="store_true", help="replace the webhook signing secret"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        provider = provider_named(options["provider_id"])
        try:
            change = set_endpoint(
                provider,
                url=options["url"],
                email=options["email"],
                clear=options["clear"],
                rotate_secret=options["rotate_secret"],
                who="command",
            )
        except UnsafeTarget as exc:
            raise CommandError(f"Refused URL: {exc}") from exc
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        endpoint = change.endpoint
        if endpoint is None:
            self.stdout.write(self.style.SUCCESS(f"{provider}: no delivery endpoint."))
            return
        url, email = endpoint.url or "(none)", endpoint.email or "(none)"
        self.stdout.write(self.style.SUCCESS(f"{provider}: webhook {url}, email {email}."))
        if change.new_secret:
            self.stdout.write("Webhook signing secret (shown once):")
            self.stdout.write(change.new_secret)
