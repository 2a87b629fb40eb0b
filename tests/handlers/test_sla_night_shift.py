"""A team whose hours span midnight (#12): "22:00-06:00" is one shift that ends the next morning,
as people write it. The SLA clock counts the part of last night's shift after midnight, across a
weekend and across a DST change; overlapping spans are refused at load. Real config parsing, the
pipeline on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from bot.config import ConfigError
from handlers import sla
from handlers.business_hours import BusinessHours
from storage import staff
from storage.db import Database
from storage.models import Conversation
from tests.handlers.care_helpers import care_pipeline, config, message

SHANGHAI = ZoneInfo("Asia/Shanghai")
NIGHTS = {
    "name": "night",
    "members": ["amy"],
    "leads": ["lou"],
    "timezone": "Asia/Shanghai",
    "hours": {d: "22:00-06:00" for d in ("mon", "tue", "wed", "thu", "fri")},
}
CFG = config(
    routing={"teams": [NIGHTS]},
    sla={"first_response": {"high": "4h"}, "resolution": {"high": "24h"}},
)
COMPLAINT = "The parcel arrived broken, this is unacceptable!"


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI).astimezone(UTC)  # type: ignore[misc]


async def test_a_night_shift_counts_the_hours_after_midnight(db: Database) -> None:
    async with db.transaction() as s:
        await staff.add(s, "amy")
        await staff.add(s, "lou", role="lead")
    pipeline, router = care_pipeline(db, CFG)
    # Tuesday 02:00, inside Monday night's shift: 4 h later is Tuesday 06:00, as it closes.
    inside = await pipeline.receive(message(1, COMPLAINT, local(2027, 3, 2, 2, 0)))
    # Tuesday 05:30: 30 min of Monday night, 3 h 30 of Tuesday night (Wednesday 01:30).
    late = await pipeline.receive(message(2, COMPLAINT, local(2027, 3, 2, 5, 30), user="u2"))
    # Saturday 05:00, inside Friday night's shift: 1 h left of it, 3 h from Monday 22:00.
    weekend = await pipeline.receive(message(3, COMPLAINT, local(2027, 3, 6, 5, 0), user="u3"))
    await pipeline.close()
    async with db.sessions() as s:
        due = {
            n: (await s.get(Conversation, r.conversation_id)).first_response_due_at  # type: ignore[union-attr]
            for n, r in (("inside", inside), ("late", late), ("weekend", weekend))
        }
    assert due == {
        "inside": local(2027, 3, 2, 6, 0),
        "late": local(2027, 3, 3, 1, 30),
        "weekend": local(2027, 3, 9, 1, 0),
    }
    # First responses escalate when due in shift time, never through the day or the weekend.
    async def first_late(at: datetime) -> list[int]:
        found = await sla.check(db, at, router)
        return [b.conversation_id for b in found if b.target == "first_response"]

    assert await first_late(local(2027, 3, 2, 21, 0)) == [inside.conversation_id]
    assert await first_late(local(2027, 3, 3, 1, 29)) == []
    assert await first_late(local(2027, 3, 3, 1, 31)) == [late.conversation_id]
    assert await first_late(local(2027, 3, 9, 0, 59)) == []
    assert await first_late(local(2027, 3, 9, 1, 1)) == [weekend.conversation_id]


def test_a_night_shift_across_the_autumn_dst_change_is_nine_hours() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    clock = BusinessHours("Europe/Berlin", {"sat": "22:00-06:00"})
    start = datetime(2027, 10, 30, 22, 0, tzinfo=berlin)  # clocks go back at 03:00 Sunday
    end = datetime(2027, 10, 31, 12, 0, tzinfo=berlin)
    assert clock.between(start, end) == timedelta(hours=9)
    assert clock.add(start, timedelta(hours=8, minutes=30)) == datetime(
        2027, 10, 31, 5, 30, tzinfo=berlin
    )
    assert clock.is_open(datetime(2027, 10, 31, 4, 0, tzinfo=berlin))
    assert not clock.is_open(datetime(2027, 10, 31, 7, 0, tzinfo=berlin))


@pytest.mark.parametrize(
    ("hours", "problem"),
    [
        ({"mon": "09:00-12:00,11:00-13:00"}, "overlap"),
        ({"mon": "22:00-06:00", "tue": "05:00-08:00"}, "overlap"),
        ({"sun": "20:00-02:00", "mon": "01:00-09:00"}, "overlap"),
        ({"mon": "10:00-10:00"}, "empty"),
    ],
)
def test_overlapping_or_empty_spans_are_refused(hours: dict[str, str], problem: str) -> None:
    team = {**NIGHTS, "hours": hours}
    with pytest.raises(ConfigError, match=problem):
        config(routing={"teams": [team]})
