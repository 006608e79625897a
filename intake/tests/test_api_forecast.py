"""GET /api/services/{id}/forecast: access, answers, what-if echo and refusals (never a 500)."""

import pytest

from allocation.services import LeadInput, intake_lead
from credentials.services import create_api_key
from providers.models import Provider

URL = "/api/services/1/forecast"


@pytest.fixture
def key_headers(db):
    _, raw = create_api_key(name="forecaster")
    return {"Authorization": f"Bearer {raw}"}


@pytest.mark.django_db
def test_the_forecast_needs_a_key_or_a_staff_session(seeded, client, key_headers):
    assert client.get(URL, {"leads": 1}).status_code == 401
    assert client.get(URL, {"leads": 1}, headers=key_headers).status_code == 200


@pytest.mark.django_db
def test_the_forecast_answers_the_next_leads_and_real_leads_then_get_them(
    seeded, client, key_headers
):
    answer = client.get(URL, {"leads": 2, "city": "Oslo"}, headers=key_headers).json()

    assert answer["leads"][0] == {
        "n": 1,
        "status": "allocated",
        "providers": [
            {"id": 1, "name": "Provider 1", "role": "mandatory", "rank": 1},
            {"id": 2, "name": "Provider 2", "role": "pool", "rank": 2},
            {"id": 3, "name": "Provider 3", "role": "pool", "rank": 3},
        ],
    }
    assert "cursor" in answer["based_on"]
    assert answer["based_on"]["city"] == "oslo"
    assert {p["id"]: p["leads_left"] for p in answer["providers"]} == {1: 8, 2: 8, 3: 9, 4: 9}
    real = [
        intake_lead(LeadInput(service_id=1, name="A", phone=f"+1555000000{n}", city="Oslo"))
        for n in range(2)
    ]
    assert [[p.id for p in r.providers] for r in real] == [
        [p["id"] for p in lead["providers"]] for lead in answer["leads"]
    ]


@pytest.mark.django_db
def test_what_if_parameters_are_repeatable_and_echoed(seeded, client, key_headers):
    response = client.get(
        f"{URL}?leads=1&pause=2&pause=3&quota=4:10&cities=4:Oslo|Bergen&at=2026-01-05T10:00:00Z",
        headers=key_headers,
    )

    answer = response.json()
    assert response.status_code == 200
    assert answer["what_if"] == {
        "pause": [2, 3],
        "resume": [],
        "quota": [{"provider": 4, "quota": 10}],
        "cities": [{"provider": 4, "cities": ["oslo", "bergen"]}],
    }
    assert answer["leads"] == [{"n": 1, "status": "waiting", "reason": "not_enough_providers"}]
    assert answer["based_on"]["at"].startswith("2026-01-05T10:00:00")
    assert Provider.objects.get(pk=2).status == "active"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("leads=0", "leads"),
        ("leads=1001", "leads"),
        ("", "leads"),
        ("leads=1&pause=999", "pause"),
        ("leads=1&pause=abc", "pause"),
        ("leads=1&quota=2", "quota"),
        ("leads=1&quota=2:-1", "quota"),
        ("leads=1&quota=999:3", "quota"),
        ("leads=1&cities=Oslo", "cities"),
        ("leads=1&pause=2&resume=2", "resume"),
        ("leads=1&at=yesterday", "at"),
        ("leads=1&city=%00", "city"),
        ("leads=1&colour=red", "colour"),
    ],
)
def test_bad_forecast_input_is_a_clear_422(seeded, client, key_headers, query, field):
    response = client.get(f"{URL}?{query}", headers=key_headers)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"
    assert [name for name in response.json()["error"]["fields"] if name.startswith(field)]


@pytest.mark.django_db
def test_an_unknown_service_is_404_and_an_inactive_one_422(seeded, client, key_headers):
    missing = client.get("/api/services/999/forecast?leads=1", headers=key_headers)
    seeded.service(2).__class__.objects.filter(pk=2).update(active=False)
    inactive = client.get("/api/services/2/forecast?leads=1", headers=key_headers)

    assert missing.status_code == 404
    assert inactive.status_code == 422
    assert "service" in inactive.json()["error"]["fields"]
