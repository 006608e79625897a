"""manage.py set_routing: sets a provider's routing rules, prints them, refuses bad input."""

from datetime import UTC, datetime
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from providers.models import Provider

MONDAY_10 = datetime(2026, 12, 7, 10, tzinfo=UTC)


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    monkeypatch.setattr(timezone, "now", lambda: MONDAY_10)


def run(*args):
    out = StringIO()
    call_command("set_routing", *map(str, args), stdout=out)
    return out.getvalue()


def rules(pk):
    p = Provider.objects.get(pk=pk)
    return (p.cities, p.timezone, p.hours, p.time_off, p.daily_cap, p.weekly_cap, p.version)


def test_set_routing_sets_every_rule_and_prints_the_result(seeded):
    out = run(
        2,
        "--cities",
        " Oslo, BERGEN ,oslo",
        "--timezone",
        "Europe/Oslo",
        "--hours",
        "mon-fri 08:00-18:00;sat 09:00-13:00",
        "--time-off",
        "2026-12-24..2026-12-26",
        "--daily-cap",
        5,
        "--weekly-cap",
        20,
    )

    assert rules(2)[:6] == (
        ["oslo", "bergen"],
        "Europe/Oslo",
        "mon-fri 08:00-18:00; sat 09:00-13:00",
        [["2026-12-24", "2026-12-26"]],
        5,
        20,
    )
    assert out.splitlines() == [
        "Provider 2 (#2)",
        "  cities:     oslo, bergen",
        "  timezone:   Europe/Oslo",
        "  hours:      mon-fri 08:00-18:00; sat 09:00-13:00",
        "  time off:   2026-12-24..2026-12-26",
        "  daily cap:  5 (0 lead(s) today)",
        "  weekly cap: 20 (0 lead(s) this week)",
        "  now:        eligible",
    ]


def test_set_routing_changes_only_what_it_is_given_and_can_undo_each_rule(seeded):
    run(
        3,
        "--cities",
        "Pune",
        "--hours",
        "sat 09:00-10:00",
        "--daily-cap",
        1,
        "--time-off",
        "2026-12-24",
    )

    out = run(3, "--time-off", "2026-12-31")
    assert "not eligible (off_hours) until 2026-12-12 09:00 UTC" in out
    assert Provider.objects.get(pk=3).time_off == [
        ["2026-12-24", "2026-12-24"],
        ["2026-12-31", "2026-12-31"],
    ]

    out = run(
        3, "--everywhere", "--always", "--clear-time-off", "--no-daily-cap", "--no-weekly-cap"
    )
    assert rules(3)[:6] == ([], "", "", [], None, None)
    assert "  cities:     everywhere" in out
    assert "  timezone:   UTC (the site's)" in out
    assert out.rstrip().endswith("now:        eligible")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--timezone", "Mars/Olympus"], "Unknown timezone"),
        (["--hours", "mon 18:00-08:00"], "ends before it starts"),
        (["--hours", "weekdays 9-5"], "hours"),
        (["--hours", "  "], "--always"),
        (["--time-off", "2026-12-26..2026-12-24"], "ends before it starts"),
        (["--time-off", "26/12/2026"], "not a date range"),
        (["--time-off", "2026-12-01..2026-12-10", "--time-off", "2026-12-10"], "overlaps"),
        (["--daily-cap", "-1"], "daily-cap"),
        (["--weekly-cap", "-3"], "0 or more"),
        (["--cities", " , "], "--everywhere"),
    ],
)
def test_set_routing_refuses_bad_input_and_changes_nothing(seeded, args, message):
    before = rules(4)

    with pytest.raises(CommandError, match=message):
        run(4, "--cities", "Oslo", *args) if args[0] != "--cities" else run(4, *args)

    assert rules(4) == before


def test_set_routing_refuses_time_off_overlapping_what_is_stored(seeded):
    run(5, "--time-off", "2026-12-20..2026-12-27")

    with pytest.raises(CommandError, match="overlaps"):
        run(5, "--time-off", "2026-12-27..2026-12-28")

    assert Provider.objects.get(pk=5).time_off == [["2026-12-20", "2026-12-27"]]


def test_set_routing_refuses_an_unknown_provider(seeded):
    with pytest.raises(CommandError, match="No provider with id 99"):
        run(99, "--everywhere")
