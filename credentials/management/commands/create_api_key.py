"""Create an API key for a lead source; the raw key is printed once, as the last line."""

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from credentials.services import create_api_key

NAME_MAX = 120


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Who uses the key; stored as the lead's source.")
        parser.add_argument(
            "--rate-limit",
            default="",
            help="Lead submissions allowed per window for this key, e.g. 1000/s, 600/m or "
            "20000/h; 0 for no limit. Default: RATE_LIMIT_PER_KEY.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["name"].strip()
        if not name or len(name) > NAME_MAX:
            raise CommandError(f"NAME must be 1 to {NAME_MAX} characters.")
        try:
            key, raw = create_api_key(name=name, rate_limit=options["rate_limit"])
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stdout.write(
            self.style.SUCCESS(f'Created API key #{key.pk} "{key.name}" ({key.key_prefix}…).')
        )
        self.stdout.write("Store it now; it is not shown again:")
        self.stdout.write(raw)
