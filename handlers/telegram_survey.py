"""A Telegram survey button press -> handlers.survey.record_answer, in one transaction.

The pressing Telegram user must be the customer who was asked: record_answer checks that with the
customer behind the user's Telegram identity. What the customer then sees (a short toast) comes
from the survey_thanks / survey_refused templates, in the customer's language.
"""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession

from bot.commands import PressAnswer, SurveyPress
from bot.config import Config
from bot.text import redact_id
from handlers import care, survey
from handlers.templating import language_of
from storage import customers, surveys
from storage.db import Database
from storage.models import Customer, utcnow

log = logging.getLogger("kefu.telegram_survey")



async def handle(db: Database, config: Config, press: SurveyPress) -> PressAnswer:
    """Returns after the commit; a refused press (twice, expired, someone else's) changes
    nothing."""
    async with db.transaction() as session:
        customer = await _customer_of(session, press.channel, press.user_id)
        language = language_of(
            (customer.language if customer else None) or press.language,
            config.campaigns.default_language,
        )
        try:
            answered = await survey.record_answer(
                session,
                survey_id=press.survey_id,
                score=press.score,
                channel=press.channel,
                # No customer yet for this user: -1 matches no survey, so the press is refused.
                customer_id=customer.id if customer is not None else -1,
            )
        except survey.SurveyError as exc:
            reason = await _refusal(session, press, customer)
            log.info(
                "telegram_survey.refused survey=%s user=%s reason=%s detail=%s",
                press.survey_id,
                redact_id(press.user_id),
                reason,
                exc,
            )
            return PressAnswer(
                care.texts(config).render("survey_refused", language, {"reason": reason})
            )
    return PressAnswer(
        care.texts(config).render("survey_thanks", language, {"score": answered.score}),
        chosen=answered.score,
    )


async def _customer_of(session: AsyncSession, channel: str, user_id: str) -> Customer | None:
    found = await customers.holder_of(session, channel, user_id)
    return await customers.live(session, found) if found is not None else None


async def _refusal(session: AsyncSession, press: SurveyPress, customer: Customer | None) -> str:
    """Which polite refusal fits: answered already, closed (expired or a bad score), or not
    theirs."""
    asked = await surveys.by_id(session, press.survey_id)
    if asked is None or customer is None or asked.customer_id != customer.id:
        return "other"
    if asked.answered_at is not None:
        return "answered"
    now = utcnow()
    return "closed" if not asked.asked_at <= now < asked.expires_at else "other"
