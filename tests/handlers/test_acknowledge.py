"""Outside-hours acknowledgements: once per [routing] acknowledge_every, found by index however
big the outbox grows (the check runs inside the write transaction of every night-time message)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, func, select

from bot.effects import Effects, Logged
from bot.plugins import pipeline as plugged_pipeline
from handlers.acknowledge import Acknowledger
from handlers.routing import Router
from storage.db import Database
from storage.models import OutboxRow
from tests.handlers.care_helpers import config, message

NIGHT = datetime(2027, 3, 1, 15, 0, tzinfo=UTC)  # Monday 23:00 in Shanghai
CFG = config(routing={"teams": [{
    "name": "care", "timezone": "Asia/Shanghai",
    "hours": {d: "09:00-18:00" for d in ("mon", "tue", "wed", "thu", "fri")},
}], "acknowledge_every": "1h"})


async def plans(db: Database, statements: list[tuple[str, Any]]) -> list[str]:
    """The query plan of each statement, one string per plan."""
    found = []
    async with db.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        for statement, params in statements:
            if db.is_sqlite:
                cursor = await driver.execute(f"EXPLAIN QUERY PLAN {statement}", params)
                found.append("\n".join(str(row[-1]) for row in await cursor.fetchall()))
            else:
                # A tiny table is cheapest to read whole: ask whether an index *can* serve it.
                await driver.execute("SET enable_seqscan = off")
                rows = await driver.fetch(f"EXPLAIN {statement}", *params)
                found.append("\n".join(row[0] for row in rows))
    return found


async def test_outside_hours_check_uses_an_index(db: Database) -> None:
    captured: list[tuple[str, Any]] = []
    capturing = False

    @event.listens_for(db.engine.sync_engine, "before_cursor_execute")
    def capture(
        _conn: Any, _cursor: Any, statement: str, params: Any, _ctx: Any, _many: bool
    ) -> None:
        if capturing and statement.lstrip().upper().startswith("SELECT"):
            captured.append((statement, params))

    acknowledge = Acknowledger(CFG)

    async def watched(session: Any, note: Logged) -> Effects | None:
        nonlocal capturing
        capturing = True
        try:
            return await acknowledge(session, note)
        finally:
            capturing = False

    pipeline = plugged_pipeline(db, route=Router(CFG), observers=[watched])
    await pipeline.receive(message(1, "are you open?", NIGHT))
    # within the hour: no ack
    await pipeline.receive(message(2, "hello?", NIGHT + timedelta(minutes=10)))
    await pipeline.receive(message(3, "still there?", NIGHT + timedelta(hours=2)))
    await pipeline.close()
    assert captured, "the acknowledger looked nothing up"
    for plan in await plans(db, captured):
        lines = plan.splitlines()
        if db.is_sqlite:
            assert not [line for line in lines if line.startswith("SCAN")], plan
        else:
            assert "Seq Scan" not in plan and "Index" in plan, plan

    async with db.sessions() as s:
        acks = await s.scalar(
            select(func.count())
            .select_from(OutboxRow)
            .where(OutboxRow.payload["kind"].as_string() == "ack")
        )
    assert acks == 2
