"""The satisfaction survey: asked once per resolution, answered once, never after a forget."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from bot import intents
from bot.intents import from_payload
from handlers import lifecycle, staff_group, survey
from handlers.roles import Actor
from handlers.survey import SurveyError
from storage import customers, staff
from storage.db import Database
from storage.models import Conversation, Interaction, OutboxRow, Survey
from tests.handlers.care_helpers import STAFF_ROOM, care_pipeline, config, message

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
CFG = config(survey={"ask_after": "10m", "expires_after": "2d"})


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("5", (5, None)),
        (" 4 ", (4, None)),
        ("５", (5, None)),
        ("3分", (3, None)),
        ("4/5", (4, None)),
        ("5 stars!", (5, None)),
        ("5 Stars", (5, None)),
        ("2 星", (2, None)),
        ("4分。", (4, None)),
        ("5️⃣", (5, None)),
        ("3\u20e3", (3, None)),
        ("⭐⭐⭐⭐", (4, None)),
        ("★★", (2, None)),
        ("🌟🌟🌟🌟🌟", (5, None)),
        # Anything more than a score is the customer speaking: a message, not an answer.
        ("4/5 fast and polite", None),
        ("2 - slow but they fixed it", None),
        ("1，太慢了", None),
        ("1 个包裹丢了，我要投诉，退款！", None),
        ("5 items are missing", None),
        ("3 days and still nothing", None),
        ("2 packages", None),
        ("⭐⭐⭐⭐⭐⭐", None),
        ("6", None),
        ("0", None),
        ("15", None),
        ("thanks", None),
        ("", None),
    ],
)
def test_parse_answer(text: str, parsed: tuple[int, str | None] | None) -> None:
    assert survey.parse_answer(text) == parsed


async def resolved(db: Database, *, language: str = "en") -> tuple[int, int, Actor]:
    async with db.transaction() as s:
        amy = Actor.of(await staff.add(s, "amy"))
    pipeline, _ = care_pipeline(db, CFG)
    receipt = await pipeline.receive(message(1, "my order is late", T0, language=language))
    await pipeline.close()
    assert receipt.conversation_id is not None
    async with db.transaction() as s:
        change = await lifecycle.resolve(
            s, receipt.conversation_id, amy, CFG, now=T0 + timedelta(hours=1)
        )
    assert change.survey_id is not None
    return receipt.conversation_id, change.survey_id, amy


async def test_survey_is_queued_in_the_customers_language_after_the_delay(db: Database) -> None:
    cid, sid, _ = await resolved(db, language="zh")
    async with db.sessions() as s:
        row = await s.scalar(select(OutboxRow).where(OutboxRow.dedupe_key == f"survey:{sid}"))
    assert row is not None and row.payload["kind"] == "survey"
    assert row.next_attempt_at == T0 + timedelta(hours=1, minutes=10)
    assert "1 到 5" in row.payload["text"] and f"#{cid}" in row.payload["text"]
    question = from_payload(row.payload)
    assert isinstance(question, intents.Survey) and question.language == "zh"
    assert (question.survey_id, question.choices) == (sid, (1, 2, 3, 4, 5))


async def test_digit_reply_answers_without_reopening(db: Database) -> None:
    cid, sid, _ = await resolved(db)
    pipeline, _ = care_pipeline(db, CFG)
    await pipeline.receive(message(2, "5", T0 + timedelta(hours=2)))
    # A second digit is not a second answer: it is a new message and reopens.
    await pipeline.receive(message(3, "1", T0 + timedelta(hours=3)))
    await pipeline.close()
    async with db.sessions() as s:
        answer = await s.get(Survey, sid)
        conversation = await s.get(Conversation, cid)
        row = await s.scalar(select(Interaction).where(Interaction.external_id == "shop:2"))
    assert answer is not None and (answer.score, answer.comment, answer.answer_channel) == (
        5,
        None,
        "webhook",
    )
    assert row is not None and row.direction == "event" and row.meta["survey"]["score"] == 5
    assert conversation is not None and conversation.status == "open"  # reopened by "1", not by "5"


async def test_a_message_starting_with_a_digit_reopens_is_classified_and_reaches_staff(
    db: Database,
) -> None:
    cid, sid, _ = await resolved(db, language="zh")
    pipeline, _ = care_pipeline(db, CFG)
    pipeline.observers.insert(0, staff_group.mirror_observer(STAFF_ROOM))
    receipt = await pipeline.receive(
        message(2, "1 个包裹丢了，我要投诉，退款！", T0 + timedelta(hours=2))
    )
    await pipeline.close()
    assert receipt.conversation_id == cid
    async with db.sessions() as s:
        answer = await s.get(Survey, sid)
        conversation = await s.get(Conversation, cid)
        row = await s.scalar(select(Interaction).where(Interaction.external_id == "shop:2"))
        staff_rows = (
            await s.scalars(
                select(OutboxRow).where(
                    OutboxRow.channel == "telegram", OutboxRow.conversation_id == cid
                )
            )
        ).all()
    assert answer is not None and answer.score is None and answer.answered_at is None
    assert conversation is not None and conversation.status == "open" and conversation.is_complaint
    assert row is not None and row.direction == "in" and "complaint" in row.meta
    assert any("1 个包裹丢了" in (r.payload.get("text") or "") for r in staff_rows)


async def test_one_answer_per_survey_and_none_after_expiry(db: Database) -> None:
    cid, sid, _ = await resolved(db)
    async with db.transaction() as s:
        with pytest.raises(SurveyError, match="is closed"):
            await survey.record_answer(
                s,
                survey_id=sid,
                score=3,
                channel="telegram",
                now=T0 + timedelta(hours=1, minutes=5),
            )
    async with db.transaction() as s:
        await survey.record_answer(
            s, conversation_id=cid, score=3, channel="telegram", now=T0 + timedelta(hours=2)
        )
    async with db.transaction() as s:
        with pytest.raises(SurveyError, match="answered already"):
            await survey.record_answer(
                s, survey_id=sid, score=4, channel="telegram", now=T0 + timedelta(hours=3)
            )
        with pytest.raises(SurveyError, match="score has value 9"):
            await survey.record_answer(s, survey_id=sid, score=9, channel="telegram")
        with pytest.raises(SurveyError, match="belongs to another customer"):
            await survey.record_answer(
                s, survey_id=sid, score=4, channel="telegram", customer_id=999
            )


async def test_one_survey_per_resolution(db: Database) -> None:
    cid, sid, amy = await resolved(db)
    async with db.transaction() as s:
        conversation = await s.get(Conversation, cid)
        assert conversation is not None
        # same resolution
        assert (await survey.ask(s, conversation, CFG, now=T0 + timedelta(hours=2)) is None)
        conversation.status = "open"
    async with db.transaction() as s:
        change = await lifecycle.resolve(s, cid, amy, CFG, now=T0 + timedelta(hours=3))
    assert change.survey_id not in (None, sid)


async def test_forget_erases_comments_and_stops_surveys(db: Database) -> None:
    cid, sid, amy = await resolved(db)
    async with db.transaction() as s:
        await survey.record_answer(
            s,
            survey_id=sid,
            score=2,
            comment="rude agent",
            channel="webhook",
            now=T0 + timedelta(hours=2),
        )
        conversation = await s.get(Conversation, cid)
        assert conversation is not None
        conversation.status = "open"
        await customers.forget(s, conversation.customer_id)
    async with db.transaction() as s:
        change = await lifecycle.resolve(s, cid, amy, CFG, now=T0 + timedelta(hours=3))
        answer = await s.get(Survey, sid)
    assert change.survey_id is None
    assert answer is not None and answer.score == 2 and answer.comment is None
