"""Set a provider's routing rules (docs/SPEC.md §2a) and print the rules that result.

Only the options given change; the others stay as they are. Bad input (an unknown timezone,
hours that cannot be parsed, an inverted or overlapping time-off range, a negative cap) is
refused with a message, and nothing changes. Capacity the change adds (an area added, a cap
raised or removed, hours or time off changed) drains the waiting leads it lets through.

  python manage.py set_routing 7 --cities "Oslo, Bergen" --timezone Europe/Oslo \\
      --hours "mon-fri 08:00-18:00; sat 09:00-13:00" --time-off 2026-12-24..2026-12-26 \\
      --daily-cap 5 --no-weekly-cap
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from providers.management import provider_named
from providers.routing import RoutingError, parse_cities, parse_date_range
from providers.selectors import describe_routing
from providers.services import EditConflict, clean_routing, set_routing


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("provider_id", type=int)
        cities = parser.add_mutually_exclusive_group()
        cities.add_argument("--cities", help='Comma-separated cities, e.g. "Oslo,Bergen".')
        cities.add_argument("--everywhere", action="store_true", help="Serve every city.")
        parser.add_argument("--timezone", help="An IANA name, e.g. Europe/Oslo; '' for the site's.")
        hours = parser.add_mutually_exclusive_group()
        hours.add_argument("--hours", help='e.g. "mon-fri 08:00-18:00; sat 09:00-13:00".')
        hours.add_argument("--always", action="store_true", help="Always open.")
        parser.add_argument(
            "--time-off",
            action="append",
            default=[],
            metavar="YYYY-MM-DD..YYYY-MM-DD",
            help="Add a time-off range (inclusive local dates); may be repeated.",
        )
        parser.add_argument(
            "--clear-time-off", action="store_true", help="Remove every time-off range first."
        )
        daily = parser.add_mutually_exclusive_group()
        daily.add_argument("--daily-cap", type=int, metavar="N")
        daily.add_argument("--no-daily-cap", action="store_true")
        weekly = parser.add_mutually_exclusive_group()
        weekly.add_argument("--weekly-cap", type=int, metavar="N")
        weekly.add_argument("--no-weekly-cap", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        provider = provider_named(options["provider_id"])
        changes: dict[str, Any] = {}
        if options["everywhere"]:
            changes["cities"] = []
        elif options["cities"] is not None:
            changes["cities"] = parse_cities(options["cities"])
            if not changes["cities"]:
                raise CommandError("--cities names no city; use --everywhere to serve all.")
        if options["timezone"] is not None:
            changes["tz"] = options["timezone"]
        if options["always"]:
            changes["hours"] = ""
        elif options["hours"] is not None:
            if not options["hours"].strip():
                raise CommandError("--hours is empty; use --always for always open.")
            changes["hours"] = options["hours"]
        try:
            added = [parse_date_range(text) for text in options["time_off"]]
        except RoutingError as exc:
            raise CommandError(f"--time-off: {exc}") from exc
        if options["clear_time_off"]:
            changes["time_off"] = []
        changes["add_time_off"] = added
        if options["no_daily_cap"]:
            changes["daily_cap"] = None
        elif options["daily_cap"] is not None:
            changes["daily_cap"] = options["daily_cap"]
        if options["no_weekly_cap"]:
            changes["weekly_cap"] = None
        elif options["weekly_cap"] is not None:
            changes["weekly_cap"] = options["weekly_cap"]
        try:
            rules = clean_routing(provider, **changes)
            provider = set_routing(provider, rules, expected_version=provider.version)
        except EditConflict as exc:
            raise CommandError(" ".join(exc.messages)) from exc
        except ValidationError as exc:
            raise CommandError(
                "; ".join(
                    f"{field.replace('tz', 'timezone').replace('_', '-')}: {message}"
                    for field, messages in exc.message_dict.items()
                    for message in messages
                )
                + " Nothing was changed."
            ) from exc
        self.stdout.write("\n".join(describe_routing(provider, timezone.now())))
