"""A team's business hours: weekly spans in its own time zone, closed on its country's holidays and
its own closed days, open on make-up working days. The SLA clock counts these hours only."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays as holiday_calendars

from bot.config import WEEKDAYS, TeamConfig, parse_day, parse_hours

# Far enough for any real calendar (a week of holidays after a closed weekend); a bound, not a
# guess.
LOOKAHEAD_DAYS = 60
# How far a due time is searched for at all: a team open a minute a week with a 72 h target would
# otherwise walk decades of days for every message. Beyond it the caller uses the wall clock.
HORIZON_DAYS = 400

Spans = tuple[tuple[int, int], ...]


@lru_cache(maxsize=64)
def _calendar(country: str, year: int) -> tuple[frozenset[date], frozenset[date]]:
    """(public holidays, make-up working days such as China's 调休 weekends) of one year."""
    found = holiday_calendars.country_holidays(country, years=year)
    workdays = getattr(found, "weekend_workdays", ())
    return frozenset(found), frozenset(d for d in workdays if d.year == year)


class BusinessHours:
    def __init__(
        self,
        timezone: str = "UTC",
        weekly: dict[str, str] | None = None,
        holidays: str | None = None,
        *,
        closed_dates: Iterable[str] = (),
        open_dates: Iterable[date] = (),
    ) -> None:
        self.zone = ZoneInfo(timezone)
        # An empty week means around the clock; a day left out of a non-empty week is closed.
        self.always = not weekly
        self.week: list[Spans] = [
            parse_hours((weekly or {}).get(day, "closed")) for day in WEEKDAYS
        ]
        # A make-up working day replaces some weekday; it keeps the first working weekday's hours.
        self.workday: Spans = next((s for s in self.week[:5] if s), ((0, 24 * 60),))
        self.country = holidays
        self.closed_once: set[date] = set()
        self.closed_yearly: set[tuple[int, int]] = set()
        for text in closed_dates:
            year, month, day = parse_day(text)
            if year is None:
                self.closed_yearly.add((month, day))
            else:
                self.closed_once.add(date(year, month, day))
        self.open_once = frozenset(open_dates)
        # Nothing ever closes: the clock is the wall clock.
        self.wall_clock = (
            self.always and holidays is None and not self.closed_once and not self.closed_yearly
        )
        self._utc_spans: dict[date, tuple[tuple[datetime, datetime], ...]] = {}

    @classmethod
    def of(cls, team: TeamConfig) -> BusinessHours:
        return cls(
            team.timezone, team.hours, team.holidays,
            closed_dates=team.closed_dates, open_dates=team.open_dates,
        )

    def is_holiday(self, day: date) -> bool:
        if day in self.closed_once or (day.month, day.day) in self.closed_yearly:
            return True
        return self.country is not None and day in _calendar(self.country, day.year)[0]

    def _is_makeup_day(self, day: date) -> bool:
        if day in self.open_once:
            return True
        return self.country is not None and day in _calendar(self.country, day.year)[1]

    def _spans(self, day: date) -> Spans:
        if self.is_holiday(day):
            return ()
        if self.always:
            return ((0, 24 * 60),)
        if self._is_makeup_day(day):
            return self.workday
        return self.week[day.weekday()]

    def _at(self, day: date, minute: int) -> datetime:
        # 24:00 is the next midnight; fold=0 picks the first of a repeated hour at a DST change.
        return datetime.combine(day, time(0), tzinfo=self.zone) + timedelta(minutes=minute)

    def _open(self, day: date) -> tuple[tuple[datetime, datetime], ...]:
        """The day's open spans in UTC: arithmetic on aware datetimes of one zone ignores DST."""
        found = self._utc_spans.get(day)
        if found is None:
            found = tuple(
                (self._at(day, start).astimezone(UTC), self._at(day, end).astimezone(UTC))
                for start, end in self._spans(day)
            )
            if len(self._utc_spans) > 4096:
                self._utc_spans.clear()
            self._utc_spans[day] = found
        return found

    def is_open(self, when: datetime) -> bool:
        return self.next_open(when) == when

    def next_open(self, when: datetime) -> datetime | None:
        """`when` itself if the team is open then, else the next opening; None if never again
        within LOOKAHEAD_DAYS (a team whose every day is a holiday)."""
        return self.add(when, timedelta(0))

    def add(self, start: datetime, duration: timedelta) -> datetime | None:
        """The moment `duration` of business time after `start` (a due time: a 4 h target on Friday
        17:30 for a 09-18 team is Monday 12:30). None if the team never opens again within
        LOOKAHEAD_DAYS, or the moment lies beyond HORIZON_DAYS."""
        if self.wall_clock:
            return start + duration
        at = start.astimezone(UTC)
        left = duration
        # From the day before: its night shift ("22:00-06:00") may still be open.
        day = start.astimezone(self.zone).date() - timedelta(days=1)
        closed_run = 0
        last = day + timedelta(days=HORIZON_DAYS)
        while closed_run <= LOOKAHEAD_DAYS + 1 and day <= last:
            spans = self._open(day)
            closed_run = 0 if spans else closed_run + 1
            for opens, closes in spans:
                if closes <= at:
                    continue
                begin = max(opens, at)
                if begin + left <= closes:
                    return (begin + left).astimezone(start.tzinfo)
                left -= closes - begin
            day += timedelta(days=1)
        return None

    def between(self, start: datetime, end: datetime) -> timedelta:
        """Business time from `start` to `end` (zero if `end` is not later)."""
        if end <= start:
            return timedelta(0)
        if self.wall_clock:
            return end - start
        a, b = start.astimezone(UTC), end.astimezone(UTC)
        total = timedelta(0)
        day = start.astimezone(self.zone).date() - timedelta(days=1)  # last night's shift
        last = end.astimezone(self.zone).date()
        while day <= last:
            for opens, closes in self._open(day):
                overlap = min(closes, b) - max(opens, a)
                if overlap > timedelta(0):
                    total += overlap
            day += timedelta(days=1)
        return total
