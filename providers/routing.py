"""SPEC §2a's routing rules as plain values: where, when and how many leads a provider takes.

Nothing here touches the database. A provider's rules (:class:`Routing`) and its lead counts
for the current local day and ISO week (:class:`Usage`) go in; :func:`routing_reason` says
whether the provider may take a lead of a given city at a given instant, and if not, why, with
one reason code. The engine calls it on the state it has locked; the API and the dashboard on
what they read.

Precedence, when several rules refuse at once (the first one applies): ``out_of_area``,
``time_off``, ``off_hours``, ``weekly_cap``, ``daily_cap``. Where the provider works comes
before when, and the longer horizon before the shorter: time off covers whole days, hours part
of one, and a weekly cap outlasts a daily one. ``paused`` and ``no_quota`` (SPEC §2) come before
all of these; the engine checks them first.
"""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

OUT_OF_AREA = "out_of_area"
TIME_OFF = "time_off"
OFF_HOURS = "off_hours"
WEEKLY_CAP = "weekly_cap"
DAILY_CAP = "daily_cap"
# In order of precedence.
ROUTING_REASONS = (OUT_OF_AREA, TIME_OFF, OFF_HOURS, WEEKLY_CAP, DAILY_CAP)
# The reasons that time alone can lift: what the transition refresh (providers.services) keeps
# materialised in Provider.routing_open.
TIME_REASONS = (TIME_OFF, OFF_HOURS, WEEKLY_CAP, DAILY_CAP)

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTES_PER_DAY = 24 * 60
# How far ahead next_change looks past each date that matters: a week of hours and a day.
HORIZON_DAYS = 8


class RoutingError(ValueError):
    """A rule that cannot be parsed or does not make sense; the message says why."""


# --- Cities ------------------------------------------------------------------------------------


def normalise_city(text: str) -> str:
    """A city as compared: Unicode NFKC, case-folded, trimmed, inner whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def canonical_city(text: str, aliases: dict[str, str]) -> str:
    """The normalised city, through the staff's aliases (normalised alias -> canonical)."""
    key = normalise_city(text)
    return aliases.get(key, key)


def parse_cities(text: str) -> list[str]:
    """Comma-separated cities, normalised, without repeats, in the order given."""
    cities: list[str] = []
    for part in text.split(","):
        city = normalise_city(part)
        if city and city not in cities:
            cities.append(city)
    return cities


# --- Timezones ---------------------------------------------------------------------------------


@functools.cache
def zone(name: str) -> ZoneInfo:
    """The IANA zone of that name; RoutingError if there is none."""
    try:
        if not name or name != name.strip() or name.startswith("/"):
            raise ZoneInfoNotFoundError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise RoutingError(
            f"Unknown timezone “{name}”: use an IANA name such as Europe/Oslo."
        ) from exc


# --- Weekly hours ------------------------------------------------------------------------------

Interval = tuple[int, int]  # minutes since local midnight, [start, end)
_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")


@dataclass(frozen=True)
class WeeklyHours:
    """Open intervals for each weekday, Monday first; each day's sorted and disjoint."""

    days: tuple[tuple[Interval, ...], ...]

    def is_open(self, local: datetime) -> bool:
        second = local.hour * 3600 + local.minute * 60 + local.second
        return any(a * 60 <= second < b * 60 for a, b in self.days[local.weekday()])


def _minutes(text: str, *, end: bool) -> int:
    match = _TIME.match(text)
    if not match:
        raise RoutingError(f"“{text}” is not a time: write HH:MM, for example 08:00.")
    hours, minutes = int(match[1]), int(match[2])
    value = hours * 60 + minutes
    if minutes > 59 or value > MINUTES_PER_DAY or (value == MINUTES_PER_DAY and not end):
        raise RoutingError(f"“{text}” is not a time of day (00:00 to 24:00).")
    return value


def _day(text: str) -> int:
    try:
        return DAYS.index(text)
    except ValueError:
        raise RoutingError(
            f"“{text}” is not a day: use {', '.join(DAYS)}, or a range such as mon-fri."
        ) from None


def _days(text: str) -> list[int]:
    days: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            first, _, last = part.partition("-")
            a, b = _day(first.strip()), _day(last.strip())
            days.extend((a + i) % 7 for i in range((b - a) % 7 + 1))
        else:
            days.append(_day(part))
    return days


def _merge(intervals: Iterable[Interval]) -> tuple[Interval, ...]:
    merged: list[list[int]] = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return tuple((a, b) for a, b in merged)


@functools.lru_cache(maxsize=4096)
def parse_hours(text: str) -> WeeklyHours | None:
    """``mon-fri 08:00-18:00; sat 09:00-13:00`` -> WeeklyHours; blank or ``always`` -> None.

    Each part is days (a day, a range such as ``mon-fri`` or ``fri-mon``, or a comma list of
    them) and one or more ``HH:MM-HH:MM`` ranges separated by commas, in local time; ``24:00``
    ends a day. A range cannot pass midnight: write ``fri 22:00-24:00; sat 00:00-02:00``. Days
    not named are closed. Overlapping ranges are merged. RoutingError if it cannot be parsed.
    """
    text = " ".join(text.split()).lower()
    if text in ("", "always"):
        return None
    week: list[list[Interval]] = [[] for _ in DAYS]
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        match = re.match(r"^([a-z,\- ]+?)\s+(\d.*)$", part)
        if not match:
            raise RoutingError(
                f"“{part}” needs days then times, for example “mon-fri 08:00-18:00”."
            )
        days = _days(match[1])
        for span in match[2].split(","):
            start, sep, end = span.strip().partition("-")
            if not sep:
                raise RoutingError(f"“{span.strip()}” is not a range: write HH:MM-HH:MM.")
            a, b = _minutes(start.strip(), end=False), _minutes(end.strip(), end=True)
            if a >= b:
                raise RoutingError(
                    f"“{span.strip()}” ends before it starts; a range cannot pass midnight "
                    "(write fri 22:00-24:00; sat 00:00-02:00)."
                )
            for day in days:
                week[day].append((a, b))
    if not any(week):
        raise RoutingError("These hours open on no day at all; pause the provider instead.")
    return WeeklyHours(tuple(_merge(day) for day in week))


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def format_hours(hours: WeeklyHours | None) -> str:
    """The canonical text of weekly hours ('' for always open): consecutive days with the same
    ranges are grouped, so parse_hours(format_hours(h)) == h."""
    if hours is None:
        return ""
    parts: list[str] = []
    day = 0
    while day < 7:
        ranges = hours.days[day]
        last = day
        while last + 1 < 7 and hours.days[last + 1] == ranges:
            last += 1
        if ranges:
            names = DAYS[day] if last == day else f"{DAYS[day]}-{DAYS[last]}"
            parts.append(names + " " + ", ".join(f"{_clock(a)}-{_clock(b)}" for a, b in ranges))
        day = last + 1
    return "; ".join(parts)


# --- Time off ----------------------------------------------------------------------------------

DateRange = tuple[date, date]  # inclusive, in the provider's timezone


def parse_date_range(text: str) -> DateRange:
    """``2026-12-24..2026-12-26`` (or one date) -> (first, last); RoutingError if inverted."""
    first_text, sep, last_text = text.strip().partition("..")
    try:
        first = date.fromisoformat(first_text.strip())
        last = date.fromisoformat(last_text.strip()) if sep else first
    except ValueError:
        raise RoutingError(f"“{text}” is not a date range: write YYYY-MM-DD..YYYY-MM-DD.") from None
    if last < first:
        raise RoutingError(f"“{text}” ends before it starts.")
    return first, last


def check_time_off(ranges: Sequence[DateRange]) -> list[DateRange]:
    """The ranges sorted; RoutingError if one is inverted or two overlap."""
    ordered = sorted(ranges)
    for first, last in ordered:
        if last < first:
            raise RoutingError(f"Time off {first}..{last} ends before it starts.")
    for (a1, b1), (a2, b2) in itertools.pairwise(ordered):
        if a2 <= b1:
            raise RoutingError(f"Time off {a1}..{b1} overlaps {a2}..{b2}.")
    return ordered


def time_off_from_json(value: Iterable[Sequence[str]]) -> tuple[DateRange, ...]:
    return tuple((date.fromisoformat(a), date.fromisoformat(b)) for a, b in value)


def time_off_to_json(ranges: Iterable[DateRange]) -> list[list[str]]:
    return [[a.isoformat(), b.isoformat()] for a, b in ranges]


def format_time_off(ranges: Iterable[DateRange]) -> str:
    return ", ".join(f"{a}..{b}" if a != b else f"{a}" for a, b in ranges)


# --- Rules, usage and the decision ------------------------------------------------------------


@dataclass(frozen=True)
class Routing:
    """A provider's routing rules. The defaults are no rules at all: everywhere, always."""

    cities: frozenset[str] = frozenset()  # canonical cities; empty = everywhere
    timezone: str = "UTC"
    hours: WeeklyHours | None = None  # None = always open
    time_off: tuple[DateRange, ...] = ()
    daily_cap: int | None = None
    weekly_cap: int | None = None
    # Whether any rule depends on the time (hours, time off, a cap), computed once: the engine
    # asks for every candidate of every lead.
    has_time_rules: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "has_time_rules",
            bool(
                self.hours
                or self.time_off
                or self.daily_cap is not None
                or self.weekly_cap is not None
            ),
        )


@dataclass(frozen=True)
class Usage:
    """Leads counted for caps: in the local day ``day`` and the ISO week starting ``week``."""

    day: date | None = None
    day_count: int = 0
    week: date | None = None
    week_count: int = 0

    def today(self, local_day: date) -> int:
        return self.day_count if self.day == local_day else 0

    def this_week(self, local_week: date) -> int:
        return self.week_count if self.week == local_week else 0

    def plus_one(self, local_day: date) -> Usage:
        """The usage after one more lead on that local day."""
        week = week_of(local_day)
        return Usage(local_day, self.today(local_day) + 1, week, self.this_week(week) + 1)


def week_of(local_day: date) -> date:
    """The Monday that starts the ISO week of that day: the weekly cap's key."""
    return local_day - timedelta(days=local_day.weekday())


def local_time(rules: Routing, at: datetime) -> datetime:
    return at.astimezone(zone(rules.timezone))


def routing_reason(rules: Routing, usage: Usage, *, city: str | None, at: datetime) -> str | None:
    """Why the provider may not take a lead of ``city`` (canonical) at ``at``, or None.

    ``city`` None skips the area rule (the question "is it open now", whatever the city).
    """
    if city is not None and rules.cities and city not in rules.cities:
        return OUT_OF_AREA
    return time_reason(rules, usage, at)


def time_reason(rules: Routing, usage: Usage, at: datetime) -> str | None:
    """The rules that time alone can lift: time off, hours, then the weekly and daily caps."""
    if not rules.has_time_rules:
        return None
    local = local_time(rules, at)
    today = local.date()
    if any(first <= today <= last for first, last in rules.time_off):
        return TIME_OFF
    if rules.hours is not None and not rules.hours.is_open(local):
        return OFF_HOURS
    if rules.weekly_cap is not None and usage.this_week(week_of(today)) >= rules.weekly_cap:
        return WEEKLY_CAP
    if rules.daily_cap is not None and usage.today(today) >= rules.daily_cap:
        return DAILY_CAP
    return None


# --- When the answer changes ------------------------------------------------------------------


def _instants(tz: ZoneInfo, day: date, minute: int) -> Iterator[datetime]:
    """The UTC instants of a local wall time, both folds (they differ around DST changes)."""
    wall = datetime.combine(day, time()) + timedelta(minutes=minute)
    for fold in (0, 1):
        yield wall.replace(tzinfo=tz, fold=fold).astimezone(UTC)


def _transitions(tz: ZoneInfo, start: datetime, end: datetime) -> Iterator[datetime]:
    """The instants in [start, end) at which the zone's UTC offset changes (DST), to the
    second: at those the local clock jumps, and hours can open or close."""
    step = timedelta(hours=6)
    t = start
    while t < end:
        u = t + step
        if t.astimezone(tz).utcoffset() != u.astimezone(tz).utcoffset():
            lo, hi = t, u
            while hi - lo > timedelta(seconds=1):
                mid = lo + (hi - lo) / 2
                if mid.astimezone(tz).utcoffset() == lo.astimezone(tz).utcoffset():
                    lo = mid
                else:
                    hi = mid
            yield hi.replace(microsecond=0)
        t = u


def _candidates(rules: Routing, at: datetime) -> list[datetime]:
    """Every instant after ``at`` at which time_reason may change, within the horizon: local
    midnights, hours boundaries and DST changes near today and around each time-off range."""
    tz = zone(rules.timezone)
    today = local_time(rules, at).date()
    days: set[date] = set()
    anchors = [today] + [d for first, last in rules.time_off for d in (first, last + timedelta(1))]
    for anchor in anchors:
        if anchor >= today - timedelta(days=1):
            days.update(anchor + timedelta(days=i) for i in range(-1, HORIZON_DAYS))
    found: set[datetime] = set()
    for day in days:
        minutes = {0}
        if rules.hours is not None:
            minutes.update(m for interval in rules.hours.days[day.weekday()] for m in interval)
        for minute in minutes:
            found.update(_instants(tz, day, minute))
        found.update(
            _transitions(
                tz,
                datetime.combine(day, time(), tzinfo=UTC) - timedelta(hours=14),
                datetime.combine(day, time(), tzinfo=UTC) + timedelta(hours=14),
            )
        )
    return sorted(t for t in found if t > at)


def next_change(
    rules: Routing, usage: Usage, at: datetime, *, city: str | None = None
) -> datetime | None:
    """The first instant after ``at`` at which routing_reason's answer changes, if nothing else
    changes meanwhile (no lead taken, no rule edited); None if it never does (or not within
    the horizon, which only a rule that never lifts can reach).

    For a provider that is not eligible now, this is "until when"; for one that is, when it
    stops being. The transition refresh wakes the provider up at that instant.
    """
    if not rules.has_time_rules:
        return None
    now = routing_reason(rules, usage, city=city, at=at)
    if now == OUT_OF_AREA:
        return None
    for instant in _candidates(rules, at):
        if routing_reason(rules, usage, city=city, at=instant) != now:
            return instant
    return None


def with_usage_day(rules: Routing, usage: Usage, at: datetime) -> Usage:
    """The usage after one lead taken at ``at``, counted in the provider's local day."""
    return usage.plus_one(local_time(rules, at).date())


def open_again_at(rules: Routing, usage: Usage, at: datetime) -> datetime | None:
    """The first instant after ``at`` at which the time rules let the provider take leads again
    (if nothing else changes meanwhile); None if they do now, or never within the horizon."""
    if time_reason(rules, usage, at) is None:
        return None
    instant = at
    for _ in range(16):  # each step passes one change: time off, then hours, then a cap...
        instant = next_change(rules, usage, instant)
        if instant is None or time_reason(rules, usage, instant) is None:
            return instant
    return None
