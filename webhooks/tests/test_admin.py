"""ProcessedEvent in the admin: listed and viewable, never added, changed or deleted."""

from __future__ import annotations

import pytest

from webhooks.models import ProcessedEvent
from webhooks.services import apply_quota_reset

pytestmark = pytest.mark.django_db


def test_processed_events_are_listed_and_read_only(admin_client, seeded):
    apply_quota_reset(event_id="evt_admin", body_sha256="c" * 64, provider_ids=[1, 2])
    event = ProcessedEvent.objects.get()

    listing = admin_client.get("/admin/webhooks/processedevent/")
    detail = admin_client.get(f"/admin/webhooks/processedevent/{event.pk}/change/")
    add = admin_client.get("/admin/webhooks/processedevent/add/")
    delete = admin_client.get(f"/admin/webhooks/processedevent/{event.pk}/delete/")
    edit = admin_client.post(
        f"/admin/webhooks/processedevent/{event.pk}/change/", {"event_id": "changed"}
    )

    assert listing.status_code == 200
    assert b"evt_admin" in listing.content
    assert detail.status_code == 200
    assert b"Save" not in detail.content
    assert add.status_code == 403
    assert delete.status_code == 403
    assert edit.status_code == 403
    assert ProcessedEvent.objects.get().event_id == "evt_admin"
