"""Resending deliveries (the admin's action): a new attempt now, under the same delivery id."""

from __future__ import annotations

from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from delivery import sql
from delivery.models import Delivery
from events.services import announce_after_commit
from events.types import DELIVERY_UPDATED


def resend_deliveries(deliveries: QuerySet[Delivery]) -> int:
    """Make each delivery due now in a new generation, under its same id; return how many.

    A new generation: an attempt still in flight for the earlier one is logged but decides
    nothing, and the new attempt gets a fresh DELIVERY_RETRY_HOURS of retries.
    """
    ids = list(deliveries.values_list("pk", flat=True))
    if not ids:
        return 0
    params = {"deliveries": ids, "now": timezone.now(), "event": DELIVERY_UPDATED}
    with transaction.atomic(), connection.cursor() as cursor:
        resent = sql.fetch(cursor, sql.RESEND, params)[0][0]
        if resent:
            announce_after_commit()
    return resent
