"""A survey outlives its conversation's close (#12): a lead resolves and then closes, or
[lifecycle] auto_close_after is shorter than [survey] expires_after. The customer's bare score
then answers that survey (a reply on the survey's mail thread, or a plain Telegram message); it
does not open a new conversation that staff see as "5". Words still start a new conversation, and
an expired survey takes nothing. SQLite and PostgreSQL; the email reply is a real MIME message
answering the survey's own Message-ID."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.messages import Inbound
from channels.email import MailStore, to_inbound
from channels.mail_auth import AuthSettings
from handlers import lifecycle, staff_group
from handlers.roles import SYSTEM
from storage.db import Database
from storage.models import Conversation, OutboxRow, Survey
from tests.handlers.care_helpers import STAFF_ROOM, care_pipeline, config

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
CFG = config(survey={"ask_after": "0s", "expires_after": "7d"})
AUTH = AuthSettings(authserv_ids=("mx.kefu.test",), verify_dkim=False)


def _mail(n: int, body: str, at: datetime, store: MailStore, answers: str | None) -> Inbound:
    message = EmailMessage()
    message["From"] = "Ann <ann@example.org>"
    message["To"] = "support@example.com"
    message["Subject"] = "Re: How did we do?" if answers else "order 7"
    message["Message-ID"] = f"<ann-{n}@example.org>"
    if answers:
        message["In-Reply-To"] = answers
        message["References"] = answers
    message["Authentication-Results"] = "mx.kefu.test; dmarc=pass header.from=example.org"
    message.set_content(body)
    return to_inbound(
        message.as_bytes(), store, own_address="support@example.com", now=at, auth=AUTH
    )


def _telegram(n: int, text: str, at: datetime, store: MailStore, answers: str | None) -> Inbound:
    return Inbound("telegram", f"777:{n}", "777", text, received_at=at)


async def _survey_sent(db: Database, survey_id: int, channel: str) -> str:
    """Marks the survey's outbox row sent, as the worker would, and returns its external id."""
    async with db.transaction() as s:
        row = await s.scalar(select(OutboxRow).where(OutboxRow.dedupe_key == f"survey:{survey_id}"))
        assert row is not None
        row.status = "sent"
        row.external_id = "<survey-1@kefu.example.com>" if channel == "email" else "777:900"
        return row.external_id


@pytest.mark.parametrize("make", [_telegram, _mail], ids=["telegram", "email"])
async def test_a_bare_score_answers_the_survey_of_a_closed_conversation(
    db: Database, make: Callable[[int, str, datetime, MailStore, str | None], Inbound],
    tmp_path: Path,
) -> None:
    store = MailStore(tmp_path / "mail", 1 << 20)
    pipeline, _ = care_pipeline(db, CFG)
    pipeline.observers.insert(0, staff_group.mirror_observer(STAFF_ROOM))
    channel = "telegram" if make is _telegram else "email"
    first = await pipeline.receive(make(1, "where is my parcel?", T0, store, None))
    cid = first.conversation_id
    assert cid is not None
    async with db.transaction() as s:
        change = await lifecycle.resolve(s, cid, SYSTEM, CFG, now=T0 + timedelta(hours=1))
        await lifecycle.close(s, cid, SYSTEM, CFG, now=T0 + timedelta(hours=1, minutes=5))
    assert change.survey_id is not None
    survey_mail = await _survey_sent(db, change.survey_id, channel)

    answered = await pipeline.receive(
        make(2, "5", T0 + timedelta(hours=3), store, survey_mail)
    )
    spoken = await pipeline.receive(
        make(3, "4 and the parcel is still missing", T0 + timedelta(hours=4), store, survey_mail)
    )
    await pipeline.close()

    async with db.sessions() as s:
        survey = await s.get(Survey, change.survey_id)
        conversations = await s.scalar(select(func.count()).select_from(Conversation))
        closed = await s.get(Conversation, cid)
    assert survey is not None and survey.score == 5
    assert answered.conversation_id == cid  # logged in the conversation it rates
    assert closed is not None and closed.status == "closed"
    # Only the words started a new conversation.
    assert spoken.conversation_id not in (None, cid)
    assert conversations == 2


async def test_an_expired_survey_of_a_closed_conversation_takes_nothing(db: Database) -> None:
    pipeline, _ = care_pipeline(db, CFG)
    first = await pipeline.receive(Inbound("telegram", "777:1", "777", "hello", received_at=T0))
    cid = first.conversation_id
    assert cid is not None
    async with db.transaction() as s:
        change = await lifecycle.resolve(s, cid, SYSTEM, CFG, now=T0 + timedelta(hours=1))
        await lifecycle.close(s, cid, SYSTEM, CFG, now=T0 + timedelta(hours=2))
    late = await pipeline.receive(
        Inbound("telegram", "777:2", "777", "5", received_at=T0 + timedelta(days=9))
    )
    await pipeline.close()
    async with db.sessions() as s:
        survey = await s.get(Survey, change.survey_id)
    assert survey is not None and survey.score is None
    assert late.conversation_id not in (None, cid)
