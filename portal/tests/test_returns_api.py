"""POST /portal/api/leads/{id}/return and the page's return form (SPEC §9)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from allocation.models import Allocation
from returns.models import Return
from returns.tests.support import allocated_lead

pytestmark = pytest.mark.django_db


def post_return(client, lead_id, body, **kwargs):
    return client.post(
        f"/portal/api/leads/{lead_id}/return",
        body,
        content_type=kwargs.pop("content_type", "application/json"),
        **kwargs,
    )


def test_a_wrong_number_is_201_approved_and_the_quota_is_back(provider_client, seeded):
    lead = allocated_lead()

    response = post_return(provider_client, lead.pk, {"reason": "wrong_number"})

    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "approved"
    assert body["credited"] is True
    ret = Return.objects.get(pk=body["id"])
    assert ret.provider_id == 2
    assert ret.returned_by == "provider:p2-owner"
    assert seeded.provider(2).remaining_quota == 10


def test_out_of_area_is_201_pending(provider_client, seeded):
    lead = allocated_lead()

    response = post_return(provider_client, lead.pk, {"reason": "out_of_area", "note": "Bergen"})

    assert response.status_code == 201
    assert response.json()["status"] == "pending"
    assert response.json()["note"] == "Bergen"
    assert seeded.provider(2).remaining_quota == 9


def test_a_second_return_is_409_with_the_first_ones_id(provider_client):
    lead = allocated_lead()
    first = post_return(provider_client, lead.pk, {"reason": "spam"}).json()

    response = post_return(provider_client, lead.pk, {"reason": "duplicate"})

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "already_returned"
    assert response.json()["error"]["return_id"] == first["id"]


def test_a_return_after_the_window_is_422_with_the_reason(provider_client, settings):
    settings.RETURN_WINDOW_DAYS = 7
    lead = allocated_lead()
    Allocation.objects.filter(lead=lead).update(created_at=lead.created_at - timedelta(days=8))

    response = post_return(provider_client, lead.pk, {"reason": "spam"})

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "return_window_closed"
    assert "within 7 days" in response.json()["error"]["message"]
    assert not Return.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"reason": "other"}, "note"),
        ({"reason": "other", "note": "   "}, "note"),
        ({"reason": "bogus"}, "reason"),
        ({}, "reason"),
        ({"reason": 3}, "reason"),
        ({"reason": "spam", "note": ["x"]}, "note"),
        ({"reason": "spam", "note": "x" * 1001}, "note"),
        ({"reason": "spam", "extra": 1}, "extra"),
        ([], "request"),
    ],
)
def test_invalid_returns_are_422_by_field(provider_client, body, field):
    lead = allocated_lead()

    response = post_return(provider_client, lead.pk, body)

    assert response.status_code == 422
    assert field in response.json()["error"]["fields"]
    assert not Return.objects.exists()


def test_a_body_that_is_not_json_is_400_or_415(provider_client):
    lead = allocated_lead()

    assert post_return(provider_client, lead.pk, "{nope").status_code == 400
    assert post_return(provider_client, lead.pk, "", content_type="text/plain").status_code == 415


def test_the_stream_and_return_routes_answer_405_to_other_methods(provider_client):
    lead = allocated_lead()

    response = provider_client.get(f"/portal/api/leads/{lead.pk}/return")

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_the_page_returns_a_lead_and_says_so(provider_client, seeded):
    lead = allocated_lead()

    response = provider_client.post(
        f"/portal/leads/{lead.pk}/return", {"reason": "other", "note": "hung up"}, follow=True
    )

    assert response.status_code == 200
    page = response.content.decode()
    assert f"Lead #{lead.pk} returned: waiting for the marketplace" in page
    assert Return.objects.get().note == "hung up"


def test_the_page_explains_a_refused_return(provider_client):
    lead = allocated_lead()

    response = provider_client.post(
        f"/portal/leads/{lead.pk}/return", {"reason": "other", "note": ""}, follow=True
    )

    assert "was not returned" in response.content.decode()
    assert not Return.objects.exists()
