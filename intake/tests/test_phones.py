import pytest

from intake.phones import normalise_phone


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+1 (555) 010-0000", "+15550100000"),
        ("555.010.0000", "5550100000"),
        ("1234567", "1234567"),
        ("+123456789012345", "+123456789012345"),
        ("(030) 12 34 56", "030123456"),
    ],
)
def test_separators_are_removed_and_a_leading_plus_is_kept(raw, expected):
    assert normalise_phone(raw) == expected


def test_a_leading_plus_makes_a_different_number():
    assert normalise_phone("+15550100000") != normalise_phone("15550100000")


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "123456",  # 6 digits
        "1234567890123456",  # 16 digits
        "+1234567890123456",
        "555-abc-1234",
        "12+34567890",  # + only at the start
        "++15550100000",
        "+",
        "555_010_0000",  # underscores are not separators
        "\uff15\uff15\uff15\uff10\uff11\uff10\uff10\uff10",  # fullwidth digits
        "²³⁴⁵⁶⁷⁸",  # superscripts pass str.isdigit()
        "555 010 0000\n",
    ],
)
def test_anything_but_7_to_15_ascii_digits_is_refused(raw):
    assert normalise_phone(raw) is None
