"""Create SPEC §1's catalogue (services 1-3, providers 1-8, memberships); safe to run again."""

from typing import Any

from django.core.management.base import BaseCommand

from providers.services import seed_catalogue


class Command(BaseCommand):
    help = __doc__

    def handle(self, *args: Any, **options: Any) -> None:
        created = seed_catalogue()
        summary = ", ".join(f"{count} {what}" for what, count in created.items())
        self.stdout.write(self.style.SUCCESS(f"Seed catalogue in place (created {summary})."))
