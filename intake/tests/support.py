"""Helpers shared by the intake tests (API, auth, HTML form)."""

import json
import threading
from contextlib import contextmanager

from django.db import connection, transaction

from allocation.models import Lead
from providers.models import PoolCursor, Provider

LEAD = {"name": "Ada Lovelace", "phone": "+1 555 010 0000", "city": "London", "service": 1}


def post_lead(
    client, body=None, *, key=None, path="/api/leads", content_type="application/json", **extra
):
    """POST to the intake API; body may be a dict (sent as JSON), str or bytes (sent as is)."""
    if body is None:
        body = LEAD
    data = json.dumps(body) if isinstance(body, dict | list) else body
    # The test client leaves out Content-Type when the body is empty; an empty body must be
    # refused as JSON (400), not for its media type.
    extra.setdefault("CONTENT_TYPE", content_type)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.post(path, data=data, content_type=content_type, headers=headers, **extra)


def stored_state():
    """Everything intake may write: leads, quotas and cursors."""
    return (
        list(Lead.objects.order_by("pk").values_list("pk", "phone", "status")),
        list(Provider.objects.order_by("pk").values_list("pk", "remaining_quota")),
        list(PoolCursor.objects.order_by("pk").values_list("service_id", "position")),
    )


@contextmanager
def cursor_locked(service_id, *, lock_timeout_ms=20):
    """Hold the service's cursor lock in another connection, as a long allocation would.

    The caller's own lock wait is cut to ``lock_timeout_ms`` so that the engine gives up fast.
    Needs a transactional test: the other connection must see committed rows.
    """
    locked, release = threading.Event(), threading.Event()

    def hold():
        try:
            with transaction.atomic():
                PoolCursor.objects.select_for_update().get(service_id=service_id)
                locked.set()
                release.wait(10)
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert locked.wait(10)
    with connection.cursor() as cursor:
        cursor.execute(f"SET lock_timeout = {int(lock_timeout_ms)}")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
        release.set()
        holder.join()
