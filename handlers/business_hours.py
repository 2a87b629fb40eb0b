"""A team's business hours: weekly spans in its own time zone, closed on its country's holidays."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays as holiday_calendars

from bot.config import WEEKDAYS, TeamConfig, parse_hours

# Far enough for any real calendar (a week of holidays after a closed weekend); a bound, not a guess.
LOOKAHEAD_DAYS = 60


@lru_cache(maxsize=64)
def _holiday_dates(country: str, year: int) -> frozenset[date]:
    return frozenset(holiday_calendars.country_holidays(country, years=year))


class BusinessHours:
    def __init__(
        self,
        timezone: str = "UTC",
        weekly: dict[str, str] | None = None,
        holidays: str | None = None,
    ) -> None:
        self.zone = ZoneInfo(timezone)
        # An empty week means around the clock; a day left out of a non-empty week is closed.
        self.always = not weekly
        self.week: list[tuple[tuple[int, int], ...]] = [
            parse_hours((weekly or {}).get(day, "closed")) for day in WEEKDAYS
        ]
        self.country = holidays

    @classmethod
    def of(cls, team: TeamConfig) -> BusinessHours:
        return cls(team.timezone, team.hours, team.holidays)

    def is_holiday(self, day: date) -> bool:
        return self.country is not None and day in _holiday_dates(self.country, day.year)

    def _spans(self, day: date) -> tuple[tuple[int, int], ...]:
        if self.is_holiday(day):
            return ()
        if self.always:
            return ((0, 24 * 60),)
        return self.week[day.weekday()]

    def _at(self, day: date, minute: int) -> datetime:
        # 24:00 is the next midnight; fold=0 picks the first of a repeated hour at a DST change.
        return datetime.combine(day, time(0), tzinfo=self.zone) + timedelta(minutes=minute)

    def is_open(self, when: datetime) -> bool:
        return self.next_open(when) == when

    def next_open(self, when: datetime) -> datetime | None:
        """`when` itself if the team is open then, else the next opening; None if never again
        within LOOKAHEAD_DAYS (a team whose every day is a holiday)."""
        local = when.astimezone(self.zone)
        for offset in range(LOOKAHEAD_DAYS + 1):
            day = local.date() + timedelta(days=offset)
            for start, end in self._spans(day):
                opens, closes = self._at(day, start), self._at(day, end)
                if closes <= local:
                    continue
                return when if opens <= local else opens.astimezone(when.tzinfo)
        return None
