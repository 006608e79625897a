"""Allocate waiting leads, oldest first, now that capacity may be back: one pass, by hand.

In production the background worker (`make worker`) drains after every change that adds
capacity and once a minute; this command is for an operator who wants it done now.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from allocation.services import allocate_waiting_leads


class Command(BaseCommand):
    help = __doc__

    def handle(self, *args: Any, **options: Any) -> None:
        allocated = allocate_waiting_leads()
        self.stdout.write(self.style.SUCCESS(f"Allocated {allocated} waiting lead(s)."))
