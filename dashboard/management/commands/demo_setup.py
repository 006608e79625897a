"""Prepare a local demo: a staff login and an API key, printed with the login URL and a curl.

For local use only: it refuses to run when DEBUG is off. It creates what is missing and changes
nothing that exists, so `make run` can run it on every start without signing anyone out or
breaking a key in use:

- the staff superuser "admin", with the password in DEMO_ADMIN_PASSWORD (default "admin"),
  only if there is no user "admin"; an existing one keeps its password and rights;
- an API key named "demo", only if no usable "demo" key exists. Only a key's hash is stored,
  so its raw key is printed once, as the last line, when it is created; later runs say how to
  make a new key instead. No key is ever revoked.
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.urls import reverse

from credentials.models import ApiKey
from credentials.services import create_api_key

DEMO_USERNAME = "admin"
DEMO_KEY_NAME = "demo"
NEW_KEY_COMMAND = ".venv/bin/python manage.py create_api_key NAME"
# A new phone number on every run of the sample (seconds since 1970, then bash's $RANDOM where
# there is one), so it never answers 409 duplicate_lead; 7 to 15 digits either way.
TRY_IT_BODY = (
    """'{"name": "Ada", "phone": "+'"$(date +%s)$RANDOM"'", "city": "Paris", "service": 1}'"""
)


class Command(BaseCommand):
    help = __doc__

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError(
                "demo_setup is for local use only and refuses to run with DEBUG off."
            )
        password = os.environ.get("DEMO_ADMIN_PASSWORD") or "admin"
        with transaction.atomic():
            user_model = get_user_model()
            user_created = not user_model.objects.filter(username=DEMO_USERNAME).exists()
            if user_created:
                user_model.objects.create_superuser(username=DEMO_USERNAME, password=password)
            key = ApiKey.objects.usable().filter(name=DEMO_KEY_NAME).order_by("pk").first()
            raw_key = None
            if key is None:
                key, raw_key = create_api_key(name=DEMO_KEY_NAME)

        base = f"http://127.0.0.1:{os.environ.get('PORT') or '8000'}"
        lines = [
            "Demo setup (local use only):",
            f"  Admin login:    {base}{reverse('admin:login')}",
            f"  Username:       {DEMO_USERNAME}",
            f"  Password:       {password}"
            if user_created
            else "  Password:       unchanged (the user existed already; this command never "
            "changes a password)",
        ]
        secret = getattr(settings, "WEBHOOK_SECRET", "")
        if secret:
            lines.append(f"  Webhook secret: {secret}")
        if raw_key is not None:
            lines += [
                f'  API key "{DEMO_KEY_NAME}" ({key.key_prefix}…): created now. Only its hash is '
                "stored: keep the key, it is the last line below and is not shown again.",
                "  Try it from any shell (a new phone number on every run):",
                f"    export LEADDIST_API_KEY={raw_key}",
            ]
        else:
            lines += [
                f'  API key "{DEMO_KEY_NAME}" ({key.key_prefix}…): made by an earlier run; it '
                "still works. Only its hash is stored, so it cannot be shown again.",
                f"  Key not at hand? Make a new one (it is the last line): {NEW_KEY_COMMAND}",
                "  Try it from any shell (a new phone number on every run):",
                "    export LEADDIST_API_KEY=$(.venv/bin/python manage.py create_api_key "
                f"{DEMO_KEY_NAME} | tail -n1)   # or the key you kept",
            ]
        lines += [
            f'    curl -i {base}/api/leads -H "Authorization: Bearer $LEADDIST_API_KEY" \\',
            "      -H 'Content-Type: application/json' \\",
            f"      -d {TRY_IT_BODY}",
        ]
        self.stdout.write(self.style.SUCCESS("\n".join(lines)))
        if raw_key is not None:
            self.stdout.write(raw_key)
