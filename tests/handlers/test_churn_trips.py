"""The churn observer's cost in round trips (issue 16: PostgreSQL per process): however many
messages and whatever mix (first contacts, a severe complaint, returning customers writing plain
messages, a complaint conversation, an opt-out, a customer scored for the first time, customer ids
far apart), it reads the database at most once per pipeline batch, and not at all for a batch of
first contacts asking plain questions (the batch itself says everything about them). Its scores
are still the full recompute's."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import event, select

from bot.effects import Effect, Logged
from bot.lookup import Lookup
from handlers.churn import Churn
from storage.db import Database
from storage.models import CustomerHealth
from tests.handlers.care_helpers import STAFF_ROOM, care_pipeline, message
from tests.handlers.test_churn import CFG, T0, scores, seeded


def opt_out(text: str) -> bool:
    return text.strip().lower() == "stop"


class Counted:
    """The churn observer, with the statements it sends while it runs (its reads: its scores are
    written by the pipeline afterwards, in one statement)."""

    def __init__(self, churn: Churn, db: Database) -> None:
        self.churn = churn
        self.inside = False
        self.reads: list[list[str]] = []  # per batch
        event.listen(db.engine.sync_engine, "before_cursor_execute", self._record)

    def _record(self, _c: Any, _cur: Any, statement: str, *_rest: Any) -> None:
        if self.inside:
            self.reads[-1].append(statement.split("\n")[0][:80])

    async def observe_batch(self, reads: Lookup, notes: Sequence[Logged]) -> list[Effect] | None:
        # What the pipeline itself has pending is not the observer's: written first.
        await reads._session.flush()  # type: ignore[attr-defined]
        self.reads.append([])
        self.inside = True
        try:
            return await self.churn.observe_batch(reads, notes)
        finally:
            self.inside = False

    async def __call__(self, reads: Lookup, note: Logged) -> list[Effect] | None:
        return await self.observe_batch(reads, [note])


async def test_a_batch_of_first_contacts_with_plain_questions_reads_nothing(db: Database) -> None:
    pipeline, router = care_pipeline(db, CFG)
    counted = Counted(Churn(CFG, router, staff_room=STAFF_ROOM), db)
    pipeline.observers.append(counted)
    batch = [
        message(f"new-{n}", f"where is order {n}?", T0 + timedelta(seconds=n), user=f"new{n}")
        for n in range(12)
    ]
    # One customer writes three times in the batch: still a first contact.
    batch += [
        message(f"again-{n}", f"and order {n}?", T0 + timedelta(seconds=20 + n), user="new3")
        for n in range(2)
    ]
    receipts = await pipeline.receive_many(batch)
    await pipeline.close()
    assert counted.reads == [[]]
    after = await scores(db)
    assert {r.customer_id for r in receipts} == set(after)
    assert after[receipts[3].customer_id].last_contact_at == T0 + timedelta(seconds=21)
    await assert_recompute_agrees(db, after, T0 + timedelta(seconds=21))


async def test_a_mixed_batch_reads_once(db: Database) -> None:
    churn, ids = await seeded(db)
    now = T0 + timedelta(days=21, hours=6)
    await churn.recompute(db, now)
    # Customers who wrote before the churn observer was on (no stored score), numbered far
    # apart from the batch's new ones by others in between.
    plain, _ = care_pipeline(db, CFG)
    legacy = [
        (await plain.receive(message(f"old-{n}", "hello", now, user=f"old{n}"))).customer_id
        for n in range(6)
    ]
    await plain.close()
    pipeline, router = care_pipeline(db, CFG)
    counted = Counted(Churn(CFG, router, staff_room=STAFF_ROOM, is_opt_out=opt_out), db)
    pipeline.observers.append(counted)
    at = now + timedelta(minutes=1)
    batch = [
        message("m1", "where is my parcel?", at, user="fresh1"),
        message("m2", "再不退款我就去12315投诉你们！", at, user="fresh2"),
        message("m3", "any news about order 9?", at, user="busy"),
        message("m4", "still waiting for my refund!", at, user="angry"),
        message("m5", "hi, a question about my invoice", at, user="burnt"),
        message("m6", "stop", at, user="quiet"),
        message("m7", "The parcel arrived broken, this is unacceptable!", at, user="content"),
        message("m8", "hello again", at, user="old0"),
        message("m9", "hello again", at, user="old5"),
        message("m10", "and order 10?", at + timedelta(seconds=1), user="busy"),
        message("m11", "where is my parcel?", at, user="fresh3"),
    ]
    receipts = await pipeline.receive_many(batch)
    await pipeline.close()
    assert len(counted.reads) == 1 and len(counted.reads[0]) <= 1, counted.reads
    after = await scores(db)
    batch_customers = {r.customer_id for r in receipts}
    assert batch_customers <= set(after) and {legacy[0], legacy[5]} <= set(after)
    assert "opted_out" in {r["code"] for r in after[ids["quiet"]].reasons}
    fresh2 = after[receipts[1].customer_id]
    assert {"open_complaints", "high_severity"} <= {r["code"] for r in fresh2.reasons}
    assert "open_complaints" in {r["code"] for r in after[ids["content"]].reasons}
    await assert_recompute_agrees(db, after, at + timedelta(seconds=1), batch_customers)


async def test_batches_of_returning_customers_read_once_each(db: Database) -> None:
    churn, _ = await seeded(db)
    now = T0 + timedelta(days=21, hours=6)
    await churn.recompute(db, now)
    pipeline, router = care_pipeline(db, CFG)
    counted = Counted(Churn(CFG, router, staff_room=STAFF_ROOM), db)
    pipeline.observers.append(counted)
    for n in range(3):
        await pipeline.receive_many(
            [
                message(f"{user}-{n}", f"and order {n}?", now + timedelta(minutes=n), user=user)
                for user in ("busy", "content", "burnt", "quiet")
            ]
        )
    await pipeline.close()
    assert [len(r) for r in counted.reads] == [1, 1, 1]


async def assert_recompute_agrees(
    db: Database, after: dict[int, CustomerHealth], at: Any, only: set[int] | None = None
) -> None:
    """The full recompute at the same moment scores each customer as the observer did."""
    _, router = care_pipeline(db, CFG)
    await Churn(CFG, router, staff_room=STAFF_ROOM, is_opt_out=opt_out).recompute(db, at)
    again = await scores(db)
    for cid, row in after.items():
        if only is None or cid in only:
            assert (again[cid].score, again[cid].reasons) == (row.score, row.reasons), cid
    async with db.sessions() as s:
        assert set(await s.scalars(select(CustomerHealth.customer_id))) == set(again)


async def test_a_batch_writes_its_scores_in_one_statement(db: Database) -> None:
    """PostgreSQL runs each row of an executemany as a statement of its own (one INSERT per
    customer, each planned and executed): the batch's score rows go as one statement."""
    pipeline, router = care_pipeline(db, CFG)
    pipeline.observers.append(Churn(CFG, router, staff_room=STAFF_ROOM))
    writes: list[bool] = []

    def record(_c: Any, _cur: Any, statement: str, _p: Any, _ctx: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO CUSTOMER_HEALTH"):
            writes.append(many)

    batch = [
        message(f"w-{n}", f"where is order {n}?", T0 + timedelta(seconds=n), user=f"w{n % 5}")
        for n in range(12)
    ]
    event.listen(db.engine.sync_engine, "before_cursor_execute", record)
    try:
        receipts = await pipeline.receive_many(batch)
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", record)
    await pipeline.close()
    if db.engine.dialect.name == "postgresql":
        assert writes == [False]
    else:  # SQLite: an executemany is one call into the library, no server in between
        assert len(writes) == 1
    after = await scores(db)
    assert set(after) == {r.customer_id for r in receipts}
    assert after[receipts[0].customer_id].last_contact_at == T0 + timedelta(seconds=10)
    assert after[receipts[0].customer_id].rate_at == T0 + timedelta(seconds=10)
    await assert_recompute_agrees(db, after, T0 + timedelta(seconds=11))
