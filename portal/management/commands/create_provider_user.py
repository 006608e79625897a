"""Create a provider's portal account (a user who is never staff).

    manage.py create_provider_user PROVIDER_ID USERNAME [--email ADDRESS]

With PROVIDER_USER_PASSWORD in the environment the account gets that password. Otherwise the
last line of the output is a one-time link that lets the user set a password, valid for 72 h
(PASSWORD_RESET_TIMEOUT); its host is SELF_BASE_URL, or http://127.0.0.1:8000.
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from portal.services import create_provider_user
from providers.management import provider_named

DEFAULT_BASE_URL = "http://127.0.0.1:8000"


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("provider_id", type=int)
        parser.add_argument("username")
        parser.add_argument("--email", default="", help="the user's email address")

    def handle(self, *args: Any, **options: Any) -> None:
        provider = provider_named(options["provider_id"])
        try:
            created = create_provider_user(
                provider,
                username=options["username"],
                email=options["email"],
                password=os.environ.get("PROVIDER_USER_PASSWORD") or None,
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        user = created.account.user
        self.stdout.write(
            self.style.SUCCESS(f"Created portal user {user.get_username()} for {provider}.")
        )
        if created.set_password_path:
            base = (settings.SELF_BASE_URL or DEFAULT_BASE_URL).rstrip("/")
            self.stdout.write("One-time link to set the password (valid 72 h):")
            self.stdout.write(base + created.set_password_path)
