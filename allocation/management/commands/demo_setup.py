"""Prepare a local demo: a staff superuser and a fresh API key, printed with the login URL.

For local use only: it refuses to run when DEBUG is off. The user is "admin" with the
password in DEMO_ADMIN_PASSWORD (default "admin"). Raw API keys are not stored, so each run
revokes the earlier "demo" keys and creates a new one. Safe to run again.
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.urls import reverse

from allocation.models import ApiKey
from allocation.services import create_api_key, revoke_api_keys

DEMO_USERNAME = "admin"
DEMO_KEY_NAME = "demo"


class Command(BaseCommand):
    help = __doc__

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError(
                "demo_setup is for local use only and refuses to run with DEBUG off."
            )
        password = os.environ.get("DEMO_ADMIN_PASSWORD") or "admin"
        with transaction.atomic():
            user, _ = get_user_model().objects.get_or_create(username=DEMO_USERNAME)
            user.is_staff = user.is_superuser = user.is_active = True
            user.set_password(password)
            user.save()
            revoke_api_keys(ApiKey.objects.filter(name=DEMO_KEY_NAME))
            _, raw_key = create_api_key(name=DEMO_KEY_NAME)

        base = f"http://127.0.0.1:{os.environ.get('PORT') or '8000'}"
        lines = [
            "Demo setup (local use only):",
            f"  Admin login:    {base}{reverse('admin:login')}",
            f"  Username:       {DEMO_USERNAME}",
            f"  Password:       {password}",
        ]
        secret = getattr(settings, "WEBHOOK_SECRET", "")
        if secret:
            lines.append(f"  Webhook secret: {secret}")
        lines += [
            "  Try it:",
            f"    curl -X POST {base}/api/leads -H 'Authorization: Bearer {raw_key}' \\",
            "      -H 'Content-Type: application/json' \\",
            """      -d '{"name": "Ada", "phone": "+15550100", "city": "Paris", "service": 1}'""",
            f"  API key ({DEMO_KEY_NAME}):",
        ]
        self.stdout.write(self.style.SUCCESS("\n".join(lines)))
        self.stdout.write(raw_key)
