"""Churn warning on a seeded history: the ranking a support lead would make, true reasons, one
warning per crossing, nothing left of a forgotten customer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import event, func, select, update

from handlers import health, lifecycle, sla
from handlers.churn import Churn
from handlers.roles import Actor
from storage import customers, staff
from storage.db import Database
from storage.models import (
    AuditEntry,
    Conversation,
    CustomerHealth,
    Identity,
    Interaction,
    OutboxRow,
)
from tests.handlers.care_helpers import STAFF_CHAT, STAFF_ROOM, care_pipeline, config, message

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)  # a Monday
CFG = config(
    routing={"teams": [{"name": "care", "members": ["amy"], "leads": ["lou"]}]},
    # Only severe complaints have targets here: the breach is the angry customer's alone.
    sla={"first_response": {"urgent": "1h"}, "resolution": {"urgent": "1d"}},
    insight={"language": "en"},
)


async def seeded(db: Database) -> tuple[Churn, dict[str, int]]:
    """Five customers a lead would rank: angry (12315, unanswered, breached) > burnt (complaint,
    CSAT 1,
    silent since) > busy (writing every day this week) > content (CSAT 5) > quiet (one hello)."""
    async with db.transaction() as s:
        amy = Actor.of(await staff.add(s, "amy"))
        await staff.add(s, "lou", role="lead")
    pipeline, router = care_pipeline(db, CFG)
    churn = Churn(CFG, router, staff_room=STAFF_ROOM)
    pipeline.observers.append(churn)
    ids: dict[str, int] = {}
    # burnt: a complaint, resolved, answered 1/5, then silence for three weeks
    r = await pipeline.receive(
        message("b1", "The parcel arrived broken, this is unacceptable!", T0, user="burnt")
    )
    ids["burnt"] = r.customer_id
    async with db.transaction() as s:
        await lifecycle.resolve(s, r.conversation_id, amy, CFG, now=T0 + timedelta(hours=1))
    await pipeline.receive(message("b2", "1", T0 + timedelta(hours=2), user="burnt"))
    # content: a question, resolved, 5/5
    r = await pipeline.receive(message("c1", "Where can I see my invoice?", T0, user="content"))
    ids["content"] = r.customer_id
    async with db.transaction() as s:
        await lifecycle.resolve(s, r.conversation_id, amy, CFG, now=T0 + timedelta(hours=1))
    await pipeline.receive(message("c2", "5", T0 + timedelta(hours=2), user="content"))
    # Both were answered ten minutes in (as an agent would, with the test's clock).
    async with db.transaction() as s:
        await s.execute(
            update(Conversation)
            .where(Conversation.customer_id.in_([ids["burnt"], ids["content"]]))
            .values(first_response_at=T0 + timedelta(minutes=10))
        )
    # quiet: one hello
    r = await pipeline.receive(message("q1", "hello", T0, user="quiet"))
    ids["quiet"] = r.customer_id
    later = T0 + timedelta(days=21)
    # busy: a message a day for the last week, never before
    for n in range(7):
        r = await pipeline.receive(
            message(
                f"y{n}", f"any news about order {n}?", later - timedelta(days=6 - n), user="busy"
            )
        )
    ids["busy"] = r.customer_id
    # angry: threatens 12315 and a chargeback; nobody answers; the SLA is breached
    r = await pipeline.receive(
        message(
            "a1",
            "再不退款我就去12315投诉你们！还要申请拒付",
            later,
            user="angry",
            display_name="王小明",
        )
    )
    ids["angry"] = r.customer_id
    await sla.check(db, later + timedelta(hours=5), router, staff_room=STAFF_ROOM)
    await pipeline.close()
    return churn, ids


async def scores(db: Database) -> dict[int, CustomerHealth]:
    async with db.sessions() as s:
        return {h.customer_id: h for h in await s.scalars(select(CustomerHealth))}


async def warnings(db: Database) -> list[Interaction]:
    async with db.sessions() as s:
        return list(
            await s.scalars(
                select(Interaction).where(Interaction.meta["kind"].as_string() == "churn_warning")
            )
        )


async def test_ranking_reasons_and_one_warning(db: Database) -> None:
    churn, ids = await seeded(db)
    now = T0 + timedelta(days=21, hours=6)
    outcome = await churn.recompute(db, now)
    assert outcome.scored == 5
    rows = await scores(db)
    ranked = sorted(ids, key=lambda name: -rows[ids[name]].score)
    assert ranked[:3] == ["angry", "burnt", "busy"]
    assert rows[ids["content"]].score == rows[ids["quiet"]].score == 0

    codes = {name: [r["code"] for r in rows[ids[name]].reasons] for name in ids}
    assert set(codes["angry"]) == {"open_complaints", "high_severity", "sla_breaches"}
    cues = next(r for r in rows[ids["angry"]].reasons if r["code"] == "high_severity")["cues"]
    assert any("12315" in c for c in cues)
    assert set(codes["burnt"]) == {"low_csat", "silence_after_bad"}
    silence = next(r for r in rows[ids["burnt"]].reasons if r["code"] == "silence_after_bad")
    assert silence["days"] == 21
    assert codes["busy"] == ["rising_contact"]
    assert rows[ids["angry"]].band == "at_risk" and rows[ids["burnt"]].band == "watch"
    # Reasons read in the staff's language.
    zh = health.explain_all(rows[ids["burnt"]].reasons, "zh")
    assert any("满意度评分 1/5" in line for line in zh) and any("沉默 21 天" in line for line in zh)

    # The crossing was noticed by the observer as the angry message arrived: one warning, in the
    # customer's log, audited, posted in the conversation's topic, naming the lead.
    (event,) = await warnings(db)
    assert event.customer_id == ids["angry"] and event.conversation_id is not None
    assert (
        "@lou" in event.text and f"#{event.conversation_id}" in event.text and "12315" in event.text
    )
    async with db.sessions() as s:
        # Staff posts waiting for one topic are merged into one message: find the warning's text.
        posts = [
            p
            for p in await s.scalars(select(OutboxRow).where(OutboxRow.address == str(STAFF_CHAT)))
            if "📉" in (p.payload.get("text") or "")
        ]
        audits = list(
            await s.scalars(select(AuditEntry).where(AuditEntry.action == "insight.churn_warning"))
        )
    assert len(posts) == 1 and posts[0].payload["text"].count("📉") == 1
    assert posts[0].conversation_id == event.conversation_id
    assert [a.subject for a in audits] == [f"customer:{ids['angry']}"]

    # More messages and more recomputes while still at risk: no second warning.
    pipeline, router = care_pipeline(db, CFG)
    pipeline.observers.append(Churn(CFG, router, staff_room=STAFF_ROOM))
    for n in range(3):
        await pipeline.receive(
            message(
                f"a{n + 2}",
                "still waiting for my refund!",
                now + timedelta(minutes=n),
                user="angry",
            )
        )
    await pipeline.close()
    await churn.recompute(db, now + timedelta(hours=1))
    assert len(await warnings(db)) == 1


async def test_score_falls_after_resolution_and_a_new_crossing_warns_again(db: Database) -> None:
    churn, ids = await seeded(db)
    now = T0 + timedelta(days=21, hours=6)
    await churn.recompute(db, now)
    async with db.transaction() as s:
        conversation_id = (await scores(db))[ids["angry"]]
        conv = await s.scalar(select(Conversation).where(Conversation.customer_id == ids["angry"]))
        assert conv is not None
        await lifecycle.resolve(s, conv.id, Actor("lou", "lead"), CFG, now=now)
    # Window passes: the 12315 threat and the breach age out; the score falls and re-arms.
    await churn.recompute(db, now + timedelta(days=100))
    assert (await scores(db))[ids["angry"]].alerted_at is None
    assert conversation_id is not None
    pipeline, router = care_pipeline(db, CFG)
    pipeline.observers.append(Churn(CFG, router, staff_room=STAFF_ROOM))
    later = now + timedelta(days=101)
    await pipeline.receive(
        message("a9", "Again broken! I am calling my lawyer and 12315.", later, user="angry")
    )
    await pipeline.close()
    await sla.check(db, later + timedelta(hours=5), router, staff_room=STAFF_ROOM)
    await churn.recompute(db, later + timedelta(hours=6))
    found = await warnings(db)
    assert len(found) == 2 and found[1].meta["crossing"] == 2


async def test_forgotten_customer_leaves_no_score(db: Database) -> None:
    churn, ids = await seeded(db)
    await churn.recompute(db, T0 + timedelta(days=21, hours=6))
    assert ids["angry"] in await scores(db)
    async with db.transaction() as s:
        await customers.forget(s, ids["angry"])
    assert ids["angry"] not in await scores(db)
    await churn.recompute(db, T0 + timedelta(days=22))
    rows = await scores(db)
    assert ids["angry"] not in rows and len(rows) == 4
    async with db.sessions() as s:
        (event,) = await s.scalars(
            select(Interaction).where(Interaction.meta["kind"].as_string() == "churn_warning")
        )
        assert "12315" not in event.text  # the warning's words went with the rest of the log


async def test_unreachable_and_opted_out_count(db: Database) -> None:
    pipeline, router = care_pipeline(db, CFG)
    churn = Churn(CFG, router, is_opt_out=lambda text: text.strip().lower() == "stop")
    pipeline.observers.append(churn)
    r = await pipeline.receive(message(1, "hello", T0, user="gone"))
    async with db.transaction() as s:
        identity = await s.scalar(select(Identity).where(Identity.customer_id == r.customer_id))
        assert identity is not None
        identity.reachable = False
        identity.unreachable_reason = "bounced"
    await pipeline.receive(message(2, "stop", T0 + timedelta(minutes=1), user="gone"))
    await pipeline.close()
    row = (await scores(db))[r.customer_id]
    assert {x["code"] for x in row.reasons} == {"unreachable", "opted_out"}
    async with db.sessions() as s:
        # The full recompute reads the opt-out from the log (the consent observer's event).
        s.add(
            Interaction(
                customer_id=r.customer_id,
                channel="webhook",
                direction="event",
                author_kind="system",
                text="marketing consent withdrawn",
                meta={"kind": "consent_withdrawn"},
                created_at=T0 + timedelta(minutes=1),
            )
        )
        await s.commit()
    await churn.recompute(db, T0 + timedelta(hours=1))
    row = (await scores(db))[r.customer_id]
    assert {x["code"] for x in row.reasons} == {"unreachable", "opted_out"}
    async with db.sessions() as s:
        assert (
            await s.scalar(
                select(func.count())
                .select_from(OutboxRow)
                .where(OutboxRow.dedupe_key.like("churn:%"))
            )
            == 0
        )


async def test_a_plain_message_updates_like_a_full_recompute(db: Database) -> None:
    churn, ids = await seeded(db)
    now = T0 + timedelta(days=21, hours=6)
    await churn.recompute(db, now)
    assert {r["code"] for r in (await scores(db))[ids["burnt"]].reasons} == {
        "low_csat",
        "silence_after_bad",
    }
    pipeline, router = care_pipeline(db, CFG)
    pipeline.observers.append(Churn(CFG, router, staff_room=STAFF_ROOM))
    # Burnt breaks the silence, which reopens the complaint; busy keeps writing plain messages.
    await pipeline.receive(message("b3", "hi, a question about my invoice", now, user="burnt"))
    for n in range(3):
        await pipeline.receive(
            message(f"y{n + 10}", f"and order {n}?", now + timedelta(minutes=n), user="busy")
        )
    await pipeline.close()
    after = await scores(db)
    observed = {
        name: ([r["code"] for r in after[ids[name]].reasons], after[ids[name]].score)
        for name in ("burnt", "busy")
    }
    assert observed["burnt"] == (["low_csat", "open_complaints"], 45)
    assert after[ids["burnt"]].last_contact_at == now
    assert observed["busy"][0] == ["rising_contact"]
    # The full recompute at the same moment agrees with what the observer wrote.
    await churn.recompute(db, now + timedelta(minutes=3))
    again = await scores(db)
    for name in ("burnt", "busy"):
        assert ([r["code"] for r in again[ids[name]].reasons], again[ids[name]].score) == observed[
            name
        ]


async def test_a_batch_of_plain_messages_reads_and_writes_scores_once(db: Database) -> None:
    """The observer costs the batch two statements on customer_health, however many messages
    (issue 14: ingest no slower), and scores a customer who writes twice in one batch as if the
    messages had come one by one."""
    churn, ids = await seeded(db)
    now = T0 + timedelta(days=21, hours=6)
    await churn.recompute(db, now)
    pipeline, router = care_pipeline(db, CFG)
    pipeline.observers.append(Churn(CFG, router, staff_room=STAFF_ROOM))
    statements: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if "customer_health" in statement:
            statements.append(statement)

    batch = [
        message(f"{user}-{n}", f"and order {n}?", now + timedelta(minutes=n), user=user)
        for n in range(3)
        for user in ("busy", "content")
    ]
    event.listen(db.engine.sync_engine, "before_cursor_execute", count)
    try:
        await pipeline.receive_many(batch)
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", count)
    await pipeline.close()
    assert len(statements) == 2
    after = await scores(db)
    assert [r["code"] for r in after[ids["busy"]].reasons] == ["rising_contact"]
    assert after[ids["busy"]].last_contact_at == now + timedelta(minutes=2)
    # The full recompute at the same moment agrees with what the observer wrote.
    await churn.recompute(db, now + timedelta(minutes=2))
    again = await scores(db)
    for name in ("busy", "content"):
        assert (again[ids[name]].reasons, again[ids[name]].score) == (
            after[ids[name]].reasons,
            after[ids[name]].score,
        )


async def test_first_contacts_in_a_batch_are_scored_without_a_statement_each(db: Database) -> None:
    """New customers (no stored score yet) have their signals read for the whole batch at once;
    a severe complaint among them is scored as the full recompute scores it."""
    pipeline, router = care_pipeline(db, CFG)
    churn = Churn(CFG, router, staff_room=STAFF_ROOM)
    pipeline.observers.append(churn)
    statements: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if "customer_health" in statement:
            statements.append(statement)

    batch = [
        message(
            f"new-{n}",
            "再不退款我就去12315投诉你们！" if n == 0 else f"where is order {n}?",
            T0 + timedelta(seconds=n),
            user=f"new{n}",
        )
        for n in range(9)
    ]
    event.listen(db.engine.sync_engine, "before_cursor_execute", count)
    try:
        receipts = await pipeline.receive_many(batch)
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", count)
    await pipeline.close()
    assert len(statements) == 2
    after = await scores(db)
    assert {r.customer_id for r in receipts} == set(after)
    angry = after[receipts[0].customer_id]
    assert "high_severity" in {r["code"] for r in angry.reasons}
    await churn.recompute(db, T0 + timedelta(seconds=8))
    again = await scores(db)
    for cid, row in after.items():
        assert (again[cid].score, again[cid].reasons) == (row.score, row.reasons)


async def test_first_scoring_of_an_install_marks_without_announcing(db: Database) -> None:
    """An install with history (no scores yet): its at-risk customers are marked and listed, not
    posted one by one; the next crossing is announced."""
    pipeline, router = care_pipeline(db, CFG)  # no churn observer: the history predates insight
    r = await pipeline.receive(message("h1", "再不退款我就去12315投诉你们！", T0, user="old"))
    await sla.check(db, T0 + timedelta(hours=5), router, staff_room=STAFF_ROOM)
    await pipeline.close()
    churn = Churn(CFG, router, staff_room=STAFF_ROOM)
    outcome = await churn.recompute(db, T0 + timedelta(hours=6))
    assert outcome.at_risk == 1 and outcome.warned == 0
    assert (await scores(db))[r.customer_id].alerted_at is not None
    assert await warnings(db) == []
