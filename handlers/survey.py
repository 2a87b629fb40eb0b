"""Satisfaction survey (满意度调查): asked on resolve, answered 1-5 on any channel, once.

The question goes out on the customer's own channel with meta {"survey": {"id", "choices"}}:
Telegram renders the choices as inline buttons, the webhook channel POSTs it as type "survey", and
email customers reply with a digit. An answer is an event, not the customer speaking: it never
reopens the conversation it rates.

Answers arrive three ways: a webhook POST of type "survey" (score and comment in Inbound.meta),
any text reply that is a bare score while a survey is open ("5", "5分", "4/5", "5 stars", "5️⃣",
"⭐⭐⭐⭐", "five stars", "1 ⭐", "五星"), and a Telegram button, whose handler calls
record_answer(). Anything more than a score ("1 个包裹丢了，我要投诉"), a score sent with a photo or
file, or one its channel marked a complaint is the customer speaking: it reopens, is classified
and reaches staff. Invisible format characters, a small image embedded in a mail (a signature's
logo) and the customer's own mail signature under the score are not "more". A survey outlives its
conversation's close (bot/pipeline.py asks about the closed conversation before opening a new one).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import Config
from bot.effects import Effects, Event, Logged, SurveyAnswered
from bot.intents import Outbound
from bot.intents import Survey as SurveyQuestion
from bot.lookup import Lookup, SurveyView
from bot.messages import Attachment, Inbound
from handlers import care
from handlers.templating import language_of
from storage import customers, interactions, outbox, surveys
from storage.lookup import SessionLookup
from storage.models import Conversation, Survey, utcnow

log = logging.getLogger("kefu.survey")

CHOICES = (1, 2, 3, 4, 5)
COMMENT_LIMIT = 2000
# A bare score only: "5", "5!", "4/5", "4 of 5", "4 分", "3 stars", "five stars", "1 ⭐", "五星",
# "５" (NFKC folds full-width digits), a keycap digit "5️⃣". A word after the score makes it a
# message: a customer who starts "1 个包裹丢了" is complaining, not rating.
_NUMBERS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
    "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5,
}
_ANSWER = re.compile(
    r"^\s*([1-5]|one|two|three|four|five|[一二两三四五])\ufe0f?\u20e3?\s*"
    r"(?:(?:/|of|out\s+of)\s*(?:5|five)\s*(?:stars?|points?|分|星|⭐\ufe0f?|★|🌟)?"
    r"|分|星|颗星|stars?|points?|⭐\ufe0f?|★|🌟)?"
    r"[\s.!。！~]*$",
    re.IGNORECASE,
)
# "⭐⭐⭐⭐", "★★★": one to five of the same star.
_STARS = re.compile(r"^\s*(?:(⭐\ufe0f?){1,5}|(★){1,5}|(🌟){1,5})[\s.!。！~]*$")
_STAR_CHARS = frozenset("⭐★🌟")


# An image embedded in a mail's body up to this size is decoration (a signature's logo, some
# kilobytes), not something the customer shows (a pasted screenshot is hundreds).
DECORATION_BYTES = 64 * 1024


def _decoration(attachment: Attachment) -> bool:
    return (
        attachment.inline is True
        and attachment.kind == "photo"
        and attachment.size is not None
        and attachment.size <= DECORATION_BYTES
    )


_SIGNATURE_BREAK = re.compile(r"\n[ \t\u3000]*\n\s*")
SIGNATURE_LINES, SIGNATURE_CHARS = 8, 400


def _lines(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.strip().splitlines() if line.strip()]


def _is_own_signature(block: str, inbound: Inbound, earlier: Sequence[str]) -> bool:
    """The block under a score is the customer's signature (Outlook and most business clients
    add it without RFC 3676's "-- " line) when it names them and ended one of their earlier
    messages in this conversation, below a body of its own. Words they repeat ("Please refund")
    name nobody; a block not seen before cannot be told from words."""
    lines = _lines(block)
    if not lines or len(lines) > SIGNATURE_LINES or len(block) > SIGNATURE_CHARS:
        return False
    names = [n.lower() for n in (inbound.display_name, inbound.address) if n and len(n) > 1]
    if not any(name in line.lower() for name in names for line in lines):
        return False
    for text in earlier:
        before = _lines(text)
        if len(before) > len(lines) and before[-len(lines):] == lines:
            return True
    return False


class SurveyError(ValueError):
    """An answer that cannot be recorded; the message says why."""


@dataclass(frozen=True, slots=True)
class Answered:
    survey_id: int
    conversation_id: int
    score: int
    comment: str | None


def parse_answer(text: str) -> tuple[int, str | None] | None:
    """(score, None) for a bare score; a text reply carries no comment (the webhook's does)."""
    if len(text) > 40:
        return None
    # Invisible format characters (RLM/LRM, zero-width spaces, a BOM, bidi isolates: category
    # Cf) come from keyboards and copy-paste, not from the customer: "\u200f5" is a bare "5".
    normal = "".join(
        ch for ch in unicodedata.normalize("NFKC", text) if unicodedata.category(ch) != "Cf"
    )
    found = _ANSWER.match(normal)
    if found is not None:
        number = found.group(1).lower()
        return (_NUMBERS[number] if number in _NUMBERS else int(number)), None
    if _STARS.match(normal):
        return sum(1 for ch in normal if ch in _STAR_CHARS), None
    return None


async def as_answer(reads: Lookup, conversation_id: int, inbound: Inbound) -> Inbound | None:
    """The pipeline asks of a message in a resolved conversation, or in one the customer reopened:
    is it an answer to the open survey? Only a bare score is, and only while no agent has written
    since the survey was asked ("thanks!" then "5" answers; "how many?" then "2" does not). Then it
    is logged as an event of kind "survey" and left to record() below."""
    if inbound.meta.get("sender_verified") is False:
        return None  # a forged From must not answer someone's survey (channels/mail_auth.py)
    if inbound.kind != "message":
        return None  # its channel marked it a complaint (a shop's webhook): never a rating
    if any(not _decoration(a) for a in inbound.attachments):
        return None  # "1" under a photo of the broken box shows staff something: a message
    parsed = parse_answer(inbound.text)
    signature: str | None = None
    if parsed is None:
        # "5", a blank line, then maybe the customer's own signature (checked below).
        parts = _SIGNATURE_BREAK.split(inbound.text.strip(), maxsplit=1)
        if len(parts) != 2 or (parsed := parse_answer(parts[0])) is None:
            return None
        signature = parts[1]
    open_survey = await reads.open_survey(conversation_id, inbound.received_at)
    if open_survey is None:
        return None
    # A bare number after an agent's question ("how many parcels?" "2") answers the agent.
    if await reads.agent_wrote_since(conversation_id, open_survey.asked_at):
        return None
    if signature is not None and not _is_own_signature(
        signature, inbound, await reads.customer_texts(conversation_id, inbound.channel)
    ):
        return None
    score, comment = parsed
    return dataclasses.replace(
        inbound,
        kind="survey",
        meta={**inbound.meta, "survey": {"id": open_survey.id, "score": score, "comment": comment}},
    )


async def ask(
    session: AsyncSession,
    conversation: Conversation,
    config: Config,
    *,
    now: datetime | None = None,
) -> Survey | None:
    """Queues the survey of the conversation's latest resolution; None when none is due (surveys
    off, a forgotten customer, no channel to ask on, or this resolution was surveyed already)."""
    cfg = config.survey
    if not cfg.enabled or not conversation.reply_channel or not conversation.reply_address:
        return None
    customer = await customers.by_id(session, conversation.customer_id)
    if customer is None or customer.forgotten_at is not None:
        return None
    now = now or utcnow()
    asked_at = now + cfg.ask_after
    survey = await surveys.create(
        session,
        conversation_id=conversation.id,
        customer_id=customer.id,
        resolution=conversation.resolutions,
        assignee=conversation.assignee,
        channel=conversation.reply_channel,
        asked_at=asked_at,
        expires_at=asked_at + cfg.expires_after,
    )
    if survey is None:
        return None
    language = language_of(customer.language, config.campaigns.default_language)
    text = care.texts(config).render(
        "survey_ask",
        language,
        {"ticket": conversation.id, "business": config.routing.business_name, "choices": CHOICES},
    )
    question = {"id": survey.id, "choices": list(CHOICES)}
    await outbox.say(
        session,
        Outbound(
            conversation.reply_channel,
            conversation.reply_address,
            SurveyQuestion(
                text=text,
                language=language,
                conversation_id=conversation.id,
                customer_id=customer.id,
                survey_id=survey.id,
                choices=tuple(CHOICES),
            ),
            f"survey:{survey.id}",
        ),
        log_meta={"kind": "survey", "survey": question},
        at=now,
        not_before=asked_at,
    )
    log.info(
        "survey.asked survey=%s conversation=%s at=%s",
        survey.id,
        conversation.id,
        asked_at.isoformat(),
    )
    return survey


async def check_answer(
    reads: Lookup,
    *,
    score: int,
    survey_id: int | None = None,
    conversation_id: int | None = None,
    customer_id: int | None = None,
    now: datetime,
) -> SurveyView:
    """The survey a 1-5 answer counts for (by its id, or the open one of a conversation). Raises
    SurveyError when there is no open survey, it was answered already, or it expired. With
    `customer_id`, the survey must be that customer's (a Telegram button pressed by someone else).
    """
    if isinstance(score, bool) or score not in CHOICES:
        raise SurveyError(f"score has value {score!r}: use a whole number from 1 to 5")
    survey: SurveyView | None
    if survey_id is not None:
        survey = await reads.survey(survey_id)
        if survey is None:
            raise SurveyError(f"no survey {survey_id}")
    elif conversation_id is not None:
        survey = await reads.open_survey(conversation_id, now)
        if survey is None:
            raise SurveyError(f"conversation {conversation_id} has no open survey")
    else:
        raise SurveyError("give survey_id or conversation_id")
    if customer_id is not None and survey.customer_id != customer_id:
        raise SurveyError(f"survey {survey.id} belongs to another customer")
    if survey.answered_at is not None:
        raise SurveyError(f"survey {survey.id} was answered already")
    if not survey.asked_at <= now < survey.expires_at:
        raise SurveyError(f"survey {survey.id} is closed (open {survey.asked_at:%Y-%m-%d %H:%M} "
                          f"to {survey.expires_at:%Y-%m-%d %H:%M} UTC)")
    return survey


def _comment(comment: str | None) -> str | None:
    return (comment or "").strip()[:COMMENT_LIMIT] or None


async def record_answer(
    session: AsyncSession,
    *,
    score: int,
    comment: str | None = None,
    channel: str,
    survey_id: int | None = None,
    conversation_id: int | None = None,
    customer_id: int | None = None,
    now: datetime | None = None,
) -> Answered:
    """Stores a 1-5 answer to a survey (a Telegram button, `kefu survey answer`), with an event
    line in the conversation's log; check_answer() says which answers count."""
    now = now or utcnow()
    survey = await check_answer(
        SessionLookup(session),
        score=score,
        survey_id=survey_id,
        conversation_id=conversation_id,
        customer_id=customer_id,
        now=now,
    )
    comment = _comment(comment)
    await surveys.answer(
        session, survey.id, score=score, comment=comment, channel=channel, at=now
    )
    interactions.add_event(
        session,
        Event(
            survey.customer_id,
            channel,
            f"survey answered: {score}" + (f" — {comment}" if comment else ""),
            {"kind": "survey_answer", "survey": survey.id, "score": score},
            now,
            conversation_id=survey.conversation_id,
            author_kind="customer",
        ),
    )
    log.info("survey.answered survey=%s conversation=%s score=%d channel=%s",
             survey.id, survey.conversation_id, score, channel)
    return Answered(survey.id, survey.conversation_id, score, comment)


async def survey_observer(reads: Lookup, note: Logged) -> Effects | None:
    """Pipeline observer: a logged survey answer (kind "survey") is recorded, in the same
    transaction (the message itself is its line in the log). An answer that cannot count
    (expired, twice, another customer's) stays in the log only."""
    inbound = note.inbound
    if inbound.kind != "survey":
        return None
    given = inbound.meta.get("survey") or {}
    score: Any = given.get("score")  # as the channel sent it: check_answer checks it
    survey_id = given.get("id")
    conversation_id = note.conversation.id if note.conversation is not None else None
    try:
        survey = await check_answer(
            reads,
            score=score,
            survey_id=int(survey_id) if survey_id is not None else None,
            conversation_id=None if survey_id is not None else conversation_id,
            customer_id=note.customer.id,
            now=inbound.received_at,
        )
    except (SurveyError, ValueError, TypeError) as exc:
        log.info("survey.answer.ignored interaction=%s reason=%s", note.interaction_id, exc)
        return None
    log.info("survey.answered survey=%s conversation=%s score=%d channel=%s",
             survey.id, survey.conversation_id, score, inbound.channel)
    return [
        SurveyAnswered(
            survey.id, score, _comment(given.get("comment")), inbound.channel, inbound.received_at
        )
    ]
