"""A customer who gets the survey, writes "thanks!" (which reopens the conversation, as any message
longer than a score does) and then "5" has answered the survey still open for them: a bare score
answers it while no agent has written since it was asked. After an agent's question ("how many
parcels?"), a bare "2" is the customer's answer to the agent: a message, not a rating."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from handlers import lifecycle
from handlers.agents import answer
from handlers.roles import SYSTEM
from storage.db import Database
from storage.models import Interaction, Survey
from tests.handlers.care_helpers import care_pipeline, config, message

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
CFG = config(survey={"ask_after": "0s"})


async def test_a_score_after_a_thank_you_answers_the_open_survey(db: Database) -> None:
    pipeline, _ = care_pipeline(db, CFG)
    first = await pipeline.receive(message(1, "where is my order", T0))
    assert first.conversation_id is not None
    async with db.transaction() as s:
        change = await lifecycle.resolve(
            s, first.conversation_id, SYSTEM, CFG, now=T0 + timedelta(hours=1)
        )
    await pipeline.receive(message(2, "thanks!", T0 + timedelta(hours=1, minutes=2)))
    await pipeline.receive(message(3, "5", T0 + timedelta(hours=1, minutes=3)))
    await pipeline.close()
    async with db.sessions() as s:
        asked = await s.get(Survey, change.survey_id)
        five = await s.scalar(select(Interaction).where(Interaction.external_id == "shop:3"))
    assert asked is not None and asked.score == 5
    assert five is not None and five.direction == "event"


async def test_a_number_after_an_agents_question_is_a_message(db: Database) -> None:
    # The agent's answer is stamped with the real clock: this conversation happens just before it.
    t0 = datetime.now(UTC) - timedelta(hours=2)
    pipeline, _ = care_pipeline(db, CFG)
    first = await pipeline.receive(message(1, "where is my order", t0))
    assert first.conversation_id is not None
    async with db.transaction() as s:
        change = await lifecycle.resolve(
            s, first.conversation_id, SYSTEM, CFG, now=t0 + timedelta(hours=1)
        )
    await pipeline.receive(message(2, "one is missing", t0 + timedelta(hours=1, minutes=2)))
    async with db.transaction() as s:
        await answer(s, first.conversation_id, "how many parcels?", agent="amy")
    await pipeline.receive(message(3, "2", datetime.now(UTC)))
    await pipeline.close()
    async with db.sessions() as s:
        asked = await s.get(Survey, change.survey_id)
        two = await s.scalar(select(Interaction).where(Interaction.external_id == "shop:3"))
    assert asked is not None and asked.score is None
    assert two is not None and two.direction == "in"
