"""SPEC §2a's rules as plain values: cities, hours, time off, caps, and their DST edges."""

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers.routing import (
    DAILY_CAP,
    OFF_HOURS,
    OUT_OF_AREA,
    TIME_OFF,
    WEEKLY_CAP,
    Routing,
    RoutingError,
    Usage,
    WeeklyHours,
    canonical_city,
    check_time_off,
    format_hours,
    next_change,
    normalise_city,
    parse_cities,
    parse_date_range,
    parse_hours,
    routing_reason,
    with_usage_day,
    zone,
)

OSLO = "Europe/Oslo"


def utc(*args):
    return datetime(*args, tzinfo=UTC)


# --- Cities ---


def test_cities_compare_after_nfkc_casefold_trim_and_whitespace_collapse():
    assert normalise_city("  SÃO\u00a0  Paulo ") == "são paulo"
    assert normalise_city("Straße") == normalise_city("STRASSE")
    assert normalise_city("\uff4f\uff53\uff4c\uff4f") == "oslo"  # full-width letters, NFKC


def test_aliases_name_the_same_city():
    aliases = {"bangalore": "bengaluru"}

    assert canonical_city(" Bangalore ", aliases) == "bengaluru"
    assert canonical_city("Bengaluru", aliases) == "bengaluru"
    assert canonical_city("Pune", aliases) == "pune"


def test_parse_cities_normalises_and_drops_repeats_and_blanks():
    assert parse_cities("Oslo, Bergen,, oslo ,  bergen") == ["oslo", "bergen"]


# --- Hours ---


def test_hours_parse_and_format_canonically():
    hours = parse_hours("Mon-Fri 08:00-18:00;  sat 09:00-13:00")

    assert format_hours(hours) == "mon-fri 08:00-18:00; sat 09:00-13:00"
    assert hours.days[0] == ((480, 1080),)
    assert hours.days[6] == ()


def test_hours_accept_lists_wrapping_ranges_several_spans_and_24_00():
    hours = parse_hours("fri-mon 10:00-12:00, 11:00-13:00; wed 00:00-24:00")

    assert format_hours(hours) == "mon 10:00-13:00; wed 00:00-24:00; fri-sun 10:00-13:00"


@pytest.mark.parametrize("text", ["", "  ", "always", "ALWAYS"])
def test_blank_or_always_hours_are_always_open(text):
    assert parse_hours(text) is None
    assert format_hours(None) == ""


@pytest.mark.parametrize(
    "text",
    [
        "mon",
        "08:00-18:00",
        "mun 08:00-18:00",
        "mon 8-18",
        "mon 18:00-08:00",
        "mon 08:00-08:00",
        "mon 08:00-24:01",
        "mon 24:00-24:00",
        "mon 08:60-09:00",
        "mon 08:00",
        ";",
    ],
)
def test_unparseable_hours_are_refused_with_a_message(text):
    with pytest.raises(RoutingError) as error:
        parse_hours(text)

    assert str(error.value)


interval = st.tuples(st.integers(0, 1439), st.integers(1, 1440)).filter(lambda ab: ab[0] < ab[1])


@given(st.lists(st.lists(interval, max_size=3), min_size=7, max_size=7))
def test_format_then_parse_gives_the_same_hours(days):
    if not any(days):
        return
    text = "; ".join(
        f"{name} "
        + ", ".join(f"{a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}" for a, b in d)
        for name, d in zip(("mon", "tue", "wed", "thu", "fri", "sat", "sun"), days, strict=True)
        if d
    )
    hours = parse_hours(text)

    assert parse_hours(format_hours(hours)) == hours
    for day, spans in enumerate(days):
        for minute in range(0, 1440, 7):
            inside = any(a <= minute < b for a, b in spans)
            local = datetime(2026, 1, 5 + day, minute // 60, minute % 60)  # 5 Jan 2026: Monday
            assert hours.is_open(local) == inside


# --- Time off, timezones ---


def test_date_ranges_parse_and_refuse_inverted_or_overlapping():
    assert parse_date_range("2026-12-24..2026-12-26") == (date(2026, 12, 24), date(2026, 12, 26))
    assert parse_date_range("2026-12-24") == (date(2026, 12, 24), date(2026, 12, 24))
    with pytest.raises(RoutingError, match="ends before"):
        parse_date_range("2026-12-26..2026-12-24")
    with pytest.raises(RoutingError, match="not a date range"):
        parse_date_range("24/12/2026")
    with pytest.raises(RoutingError, match="overlaps"):
        check_time_off([parse_date_range("2026-12-24..2026-12-26"), parse_date_range("2026-12-26")])


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "../etc/passwd", "/UTC", "Europe/"])
def test_unknown_timezones_are_refused(name):
    with pytest.raises(RoutingError, match="Unknown timezone"):
        zone(name)


def test_time_off_dates_are_inclusive_in_the_providers_timezone():
    rules = Routing(timezone=OSLO, time_off=(parse_date_range("2026-12-24..2026-12-26"),))

    # 23:30 UTC on the 23rd is already the 24th in Oslo; 23:30 UTC on the 26th the 27th.
    assert routing_reason(rules, Usage(), city="x", at=utc(2026, 12, 23, 22, 59)) is None
    assert routing_reason(rules, Usage(), city="x", at=utc(2026, 12, 23, 23, 30)) == TIME_OFF
    assert routing_reason(rules, Usage(), city="x", at=utc(2026, 12, 26, 22, 59)) == TIME_OFF
    assert routing_reason(rules, Usage(), city="x", at=utc(2026, 12, 26, 23, 0)) is None
    assert next_change(rules, Usage(), utc(2026, 12, 25, 12)) == utc(2026, 12, 26, 23)


# --- Precedence and caps ---


def test_one_reason_by_precedence():
    rules = Routing(
        cities=frozenset({"oslo"}),
        timezone="UTC",
        hours=parse_hours("mon-fri 08:00-18:00"),
        time_off=((date(2026, 12, 24), date(2026, 12, 24)),),
        daily_cap=1,
        weekly_cap=1,
    )
    used = Usage(date(2026, 12, 24), 1, date(2026, 12, 21), 1)
    thursday_night = utc(2026, 12, 24, 20)

    assert routing_reason(rules, used, city="bergen", at=thursday_night) == OUT_OF_AREA
    assert routing_reason(rules, used, city="oslo", at=thursday_night) == TIME_OFF
    assert routing_reason(rules, used, city="oslo", at=utc(2026, 12, 23, 20)) == OFF_HOURS
    assert routing_reason(rules, used, city="oslo", at=utc(2026, 12, 23, 9)) == WEEKLY_CAP
    assert routing_reason(rules, used, city=None, at=utc(2026, 12, 28, 9)) is None


def test_caps_count_in_the_local_day_and_iso_week():
    rules = Routing(timezone="UTC", daily_cap=2, weekly_cap=3)
    monday = utc(2026, 12, 28, 9)
    usage = Usage()

    usage = with_usage_day(rules, usage, monday)
    usage = with_usage_day(rules, usage, monday)
    assert routing_reason(rules, usage, city=None, at=monday) == DAILY_CAP
    assert next_change(rules, usage, monday) == utc(2026, 12, 29)
    usage = with_usage_day(rules, usage, monday + timedelta(days=1))
    assert routing_reason(rules, usage, city=None, at=monday + timedelta(days=1)) == WEEKLY_CAP
    # ISO week 53 of 2026 ends on Sunday 3 January 2027.
    assert next_change(rules, usage, monday + timedelta(days=1)) == utc(2027, 1, 4)


def test_no_rules_means_always_eligible_and_no_change():
    assert routing_reason(Routing(), Usage(), city="anywhere", at=utc(2026, 1, 1)) is None
    assert next_change(Routing(), Usage(), utc(2026, 1, 1)) is None


# --- DST: Europe/Oslo moves from CET to CEST at 01:00 UTC on 29 March 2026 (02:00 -> 03:00
# local) and back at 01:00 UTC on 25 October 2026 (03:00 -> 02:00 local). ---


def test_spring_forward_hours_inside_the_gap_open_when_the_clock_jumps():
    rules = Routing(timezone=OSLO, hours=parse_hours("sun 01:30-03:30"))

    assert routing_reason(rules, Usage(), city=None, at=utc(2026, 3, 29, 0, 29)) == OFF_HOURS
    assert routing_reason(rules, Usage(), city=None, at=utc(2026, 3, 29, 0, 30)) is None
    assert routing_reason(rules, Usage(), city=None, at=utc(2026, 3, 29, 1, 29)) is None
    assert routing_reason(rules, Usage(), city=None, at=utc(2026, 3, 29, 1, 30)) == OFF_HOURS
    # One hour of real time open: 01:30 CET to 03:30 CEST.
    assert next_change(rules, Usage(), utc(2026, 3, 29)) == utc(2026, 3, 29, 0, 30)
    assert next_change(rules, Usage(), utc(2026, 3, 29, 0, 30)) == utc(2026, 3, 29, 1, 30)


def test_spring_forward_hours_that_start_in_the_missing_hour_open_at_the_jump():
    rules = Routing(timezone=OSLO, hours=parse_hours("sun 02:30-04:00"))

    assert routing_reason(rules, Usage(), city=None, at=utc(2026, 3, 29, 0, 59)) == OFF_HOURS
    assert next_change(rules, Usage(), utc(2026, 3, 29, 0, 30)) == utc(2026, 3, 29, 1)
    assert routing_reason(rules, Usage(), city=None, at=utc(2026, 3, 29, 1)) is None


def test_autumn_back_hours_in_the_repeated_hour_are_open_twice():
    rules = Routing(timezone=OSLO, hours=parse_hours("sun 01:00-02:30"))

    assert routing_reason(rules, Usage(), city=None, at=utc(2026, 10, 24, 23, 0)) is None
    assert routing_reason(rules, Usage(), city=None, at=utc(2026, 10, 25, 0, 29)) is None
    # 02:30 CEST: closed; at 01:00 UTC the clock goes back to 02:00 CET: open again.
    assert next_change(rules, Usage(), utc(2026, 10, 25, 0, 10)) == utc(2026, 10, 25, 0, 30)
    assert routing_reason(rules, Usage(), city=None, at=utc(2026, 10, 25, 0, 45)) == OFF_HOURS
    assert next_change(rules, Usage(), utc(2026, 10, 25, 0, 45)) == utc(2026, 10, 25, 1)
    assert routing_reason(rules, Usage(), city=None, at=utc(2026, 10, 25, 1, 15)) is None
    assert next_change(rules, Usage(), utc(2026, 10, 25, 1, 15)) == utc(2026, 10, 25, 1, 30)


def test_daily_cap_counts_the_25_hour_autumn_day_as_one_day():
    rules = Routing(timezone=OSLO, daily_cap=2)
    first = utc(2026, 10, 24, 22, 30)  # 00:30 CEST, Sunday 25 October
    last = utc(2026, 10, 25, 22, 30)  # 23:30 CET, the same local day, 24 hours later

    usage = with_usage_day(rules, Usage(), first)
    usage = with_usage_day(rules, usage, last)

    assert usage.day == date(2026, 10, 25)
    assert routing_reason(rules, usage, city=None, at=last) == DAILY_CAP
    # The local day ends at 00:00 CET on the 26th: 23:00 UTC.
    assert next_change(rules, usage, last) == utc(2026, 10, 25, 23)
    assert routing_reason(rules, usage, city=None, at=utc(2026, 10, 25, 23)) is None


def test_daily_cap_counts_the_23_hour_spring_day_as_one_day():
    rules = Routing(timezone=OSLO, daily_cap=1)
    lead = utc(2026, 3, 28, 23, 30)  # 00:30 CET, Sunday 29 March

    usage = with_usage_day(rules, Usage(), lead)

    assert usage.day == date(2026, 3, 29)
    assert routing_reason(rules, usage, city=None, at=utc(2026, 3, 29, 21, 59)) == DAILY_CAP
    # The local day ends at 00:00 CEST on the 30th: 22:00 UTC, 22.5 hours after the lead.
    assert next_change(rules, usage, lead) == utc(2026, 3, 29, 22)


def test_weekly_hours_value_is_hashable_for_the_parse_cache():
    assert isinstance(parse_hours("mon 08:00-09:00"), WeeklyHours)
    assert parse_hours("mon 08:00-09:00") is parse_hours("mon 08:00-09:00")
