"""Re-encrypt every provider's webhook signing secret with the first of DELIVERY_SECRET_KEYS.

Run it after putting a new key in front of DELIVERY_SECRET_KEYS (and restarting the app with
it); then the old key can be removed (docs/DELIVERY.md, "Signing secrets at rest"). Running it
again changes nothing. The clear secrets stay the same: providers notice nothing.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from delivery.encryption import UndecryptableSecret
from delivery.endpoints import reencrypt_endpoint_secrets


class Command(BaseCommand):
    help = __doc__

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            rewritten = reencrypt_endpoint_secrets()
        except UndecryptableSecret as exc:
            raise CommandError(
                f"No key of DELIVERY_SECRET_KEYS decrypts {exc} (was its key removed too "
                "early?); nothing was changed. Put the old key back after the new one."
            ) from exc
        self.stdout.write(
            self.style.SUCCESS(
                f"Re-encrypted {rewritten} signing secret(s) with the first key; "
                "the others already were."
            )
        )
