import pytest

from intake.forms import LeadData, LeadForm
from providers.models import Service

VALID = {"name": "Ada", "phone": "+1 555 010 0000", "city": "Springfield", "service": "1"}


def errors_for(**changes):
    form = LeadForm(data={**VALID, **changes})
    assert not form.is_valid()
    return form.errors


@pytest.mark.django_db
def test_valid_data_becomes_a_lead_input_with_the_normalised_phone(seeded):
    form = LeadForm(data={**VALID, "name": "  Ada  ", "description": " Leaky tap "})

    assert form.is_valid(), form.errors
    lead = form.lead_input(source="form")

    assert lead.service_id == 1
    assert lead.name == "Ada"
    assert lead.phone == "+15550100000"
    assert lead.description == "Leaky tap"
    assert lead.source == "form"


@pytest.mark.django_db
@pytest.mark.parametrize("service", [2, "2", "service-2", " service-2 "])
def test_service_is_an_id_when_digits_and_a_slug_otherwise(seeded, service):
    form = LeadForm(data={**VALID, "service": service})

    assert form.is_valid(), form.errors
    assert form.cleaned_data["service"].pk == 2


@pytest.mark.django_db
@pytest.mark.parametrize("service", ["99", "0", "no-such-service", "9" * 30, "-1", "\u0661"])
def test_unknown_service_is_a_service_error(seeded, service):
    assert errors_for(service=service)["service"] == ["Unknown service."]


@pytest.mark.django_db
def test_inactive_service_is_a_service_error(seeded):
    Service.objects.filter(pk=1).update(active=False)

    assert errors_for(service="service-1")["service"] == ["This service is not available."]


@pytest.mark.django_db
@pytest.mark.parametrize("field", ["name", "phone", "city", "service"])
@pytest.mark.parametrize("value", ["", "   "])
def test_required_fields_must_not_be_blank(seeded, field, value):
    assert field in errors_for(**{field: value})


@pytest.mark.django_db
def test_description_is_optional(seeded):
    form = LeadForm(data=VALID)

    assert form.is_valid(), form.errors
    assert form.cleaned_data["description"] == ""


@pytest.mark.django_db
@pytest.mark.parametrize(("field", "limit"), [("name", 120), ("city", 120), ("description", 2000)])
def test_text_fields_have_a_maximum_length(seeded, field, limit):
    assert LeadForm(data={**VALID, field: "x" * limit}).is_valid()
    assert field in errors_for(**{field: "x" * (limit + 1)})


@pytest.mark.django_db
@pytest.mark.parametrize("phone", ["12345", "1234567890123456", "555-abc-1234", "12+345678"])
def test_bad_phone_is_a_phone_error(seeded, phone):
    assert "phone" in errors_for(phone=phone)


@pytest.mark.django_db
@pytest.mark.parametrize("field", ["name", "phone", "city", "service", "description"])
@pytest.mark.parametrize("bad", ["a\x00b", "a\ud800b", "\udfff"])
def test_nul_characters_and_unpaired_surrogates_are_field_errors(seeded, field, bad):
    assert field in errors_for(**{field: bad})


@pytest.mark.django_db
def test_validation_reads_only_the_chosen_service_not_the_whole_list(
    seeded, django_assert_num_queries
):
    with django_assert_num_queries(1):
        assert LeadForm(data=VALID).is_valid()


@pytest.mark.django_db
def test_lead_data_validates_like_the_form_and_shares_its_fields(seeded):
    cases = [VALID, {**VALID, "phone": "12"}, {**VALID, "service": "nope"}, {**VALID, "name": ""}]

    for data in cases:
        form, shared = LeadForm(data=data), LeadData(data=data)
        assert form.is_valid() == shared.is_valid()
        assert form.errors == shared.errors
    first, second = LeadData(data=VALID), LeadData(data=VALID)
    assert first.fields is second.fields
