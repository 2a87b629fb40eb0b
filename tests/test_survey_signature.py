"""A bare score above the customer's own mail signature (#12). Outlook and most business mail
clients add the signature without the "-- " line, so "5" arrives as "5\\n\\nAnn Li\\nPurchasing |
Example Trading". kefu knows that block: it ended the customer's earlier mail in the same
conversation, and it names them. Then the reply is a bare score. Words the customer repeats
("Please refund") are not a signature, and a block kefu has not seen before is not either.
Real MIME (Outlook's plain-text reply layout), the pipeline on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.messages import Inbound
from channels.email import MailStore
from handlers import lifecycle
from handlers.roles import SYSTEM
from storage.db import Database
from storage.models import Conversation, Survey
from tests.handlers.care_helpers import care_pipeline, config
from tests.survey_mail import from_ann, received

T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
CFG = config(survey={"ask_after": "0s", "expires_after": "2d"})
ANN_LI = "Ann Li <ann@example.org>"
SIGNATURE = "Ann Li\nPurchasing | Example Trading\nTel: +86 21 5555 0101"
OUTLOOK_QUOTE = (
    "\n\nFrom: Support <support@example.com>\nSent: Monday, March 1, 2027 10:00 AM\n"
    "To: Ann Li <ann@example.org>\nSubject: How did we do?\n\nHow would you rate us, 1 to 5?\n"
)


def mail(n: int, body: str, at: datetime, store: MailStore) -> Inbound:
    message = from_ann(f"<ann-sig-{n}@example.org>", "RE: your order", ANN_LI)
    message.set_content(body + OUTLOOK_QUOTE)
    return received(message, store, at)


@pytest.mark.parametrize(
    ("first", "reply", "score"),
    [
        (f"Where is my parcel?\n\n{SIGNATURE}", f"5\n\n{SIGNATURE}", 5),
        (f"Where is my parcel?\n\nThanks,\n{SIGNATURE}", f"4\n\nThanks,\n{SIGNATURE}", 4),
        (f"Where is my parcel?\n\n{SIGNATURE}", f"1\n\nstill no parcel\n\n{SIGNATURE}", None),
        ("My parcel is broken.\n\nPlease refund", "1\n\nPlease refund", None),
        ("Where is my parcel?", f"5\n\n{SIGNATURE}", None),
    ],
    ids=["signature", "closing-and-signature", "words-above-it", "repeated-demand", "unseen"],
)
async def test_a_score_above_the_customers_own_signature(
    db: Database, tmp_path: Path, first: str, reply: str, score: int | None
) -> None:
    store = MailStore(tmp_path / "mail", 1 << 20)
    pipeline, _ = care_pipeline(db, CFG)
    opened = await pipeline.receive(mail(1, first, T0, store))
    cid = opened.conversation_id
    assert cid is not None
    async with db.transaction() as s:
        change = await lifecycle.resolve(s, cid, SYSTEM, CFG, now=T0 + timedelta(hours=1))
    await pipeline.receive(mail(2, reply, T0 + timedelta(hours=2), store))
    await pipeline.close()
    async with db.sessions() as s:
        survey = await s.get(Survey, change.survey_id)
        conversation = await s.get(Conversation, cid)
    assert survey is not None and conversation is not None
    assert survey.score == score
    assert conversation.status == ("resolved" if score is not None else "open")


@pytest.mark.parametrize(
    ("reply", "score", "logged"),
    [
        ("> How would you rate us, 1 to 5?\n\n5\n", 5, "5"),
        ("On Mon, 1 Mar 2027 at 10:00, Support <support@example.com> wrote:\n"
         "> How would you rate us, 1 to 5?\n\n5\n", 5, "5"),
        ("On Mon, 1 Mar 2027 at 10:00, Support <support@example.com> wrote:\n"
         "> How would you rate us, 1 to 5?\n\n1 the parcel never came\n", None,
         "1 the parcel never came"),
        ("> How would you rate us?\n1\n> Anything else?\nyes, the box was wet\n", None, None),
    ],
    ids=["bottom-posted", "bottom-posted-with-header", "bottom-posted-words", "interleaved"],
)
async def test_a_score_written_under_the_quoted_survey(
    db: Database, tmp_path: Path, reply: str, score: int | None, logged: str | None
) -> None:
    """Bottom-posting: the customer writes under the quoted survey mail. What they wrote is what
    is below the quote; answers between quoted lines stay whole (and are a message)."""
    store = MailStore(tmp_path / "mail", 1 << 20)
    pipeline, _ = care_pipeline(db, CFG)
    opened = await pipeline.receive(mail(1, "Where is my parcel?", T0, store))
    cid = opened.conversation_id
    assert cid is not None
    async with db.transaction() as s:
        change = await lifecycle.resolve(s, cid, SYSTEM, CFG, now=T0 + timedelta(hours=1))
    message = from_ann("<ann-bottom@example.org>", "Re: How did we do?", ANN_LI)
    message.set_content(reply)
    inbound = received(message, store, T0 + timedelta(hours=2))
    if logged is not None:
        assert inbound.text == logged
    await pipeline.receive(inbound)
    await pipeline.close()
    async with db.sessions() as s:
        survey = await s.get(Survey, change.survey_id)
    assert survey is not None and survey.score == score
