"""Deliveries on the live dashboard: each allocation's delivery statuses in the feed, and each
provider's delivery rate in its row."""

from __future__ import annotations

import pytest

from dashboard.tests.support import settle_events
from delivery.models import Delivery
from delivery.tests.support import plain_endpoint, submit

pytestmark = pytest.mark.django_db


def test_the_feed_shows_each_allocations_deliveries_and_rows_their_delivery_rate(
    seeded, admin_client
):
    plain_endpoint(1, url="https://p1.example/hook")
    plain_endpoint(2, email="p2@example.com")
    submit(1, 1)
    submit(1, 2)
    first, second = Delivery.objects.filter(provider_id=1).order_by("pk")
    Delivery.objects.filter(pk=first.pk).update(status="delivered", attempts=3)
    Delivery.objects.filter(pk=second.pk).update(status="failed", attempts=40)
    settle_events()

    page = admin_client.get("/dashboard").content.decode()

    assert f'data-delivery-id="{first.pk}"' in page
    assert "#1 webhook <span data-delivery-status>delivered \u00d73</span>" in page
    assert "#1 webhook <span data-delivery-status>failed \u00d740</span>" in page
    assert "#2 email <span data-delivery-status>pending</span>" in page
    row = page.split('id="provider-1"')[1].split("</tr>")[0]
    assert '<strong>50%</strong> <span class="muted">of 2</span>' in row
