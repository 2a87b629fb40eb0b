"""Follow-up care (回访): some days after a complaint was resolved, or after a low survey score, ask
the customer whether the problem is really solved. The answer lands in the same conversation.

It is a campaign like the greetings and goes through their machinery:
- exactly once: one campaign_deliveries row per (followup, conversation:resolution, customer),
  inserted with ON CONFLICT DO NOTHING in the transaction that logs and queues the message, so two
  planners (two processes, a rerun after a crash) send one follow-up;
- consent: a service follow-up on the customer's own complaint is not marketing. By default
  ([campaigns.followup] consent = "service") it goes to every customer who has not opted out
  (written 退订/TD/unsubscribe/stop and not consented since); with consent = "marketing" only to
  customers with marketing consent. A customer it may not reach gets a `skipped` row saying why;
- quiet hours ([campaigns.quiet_hours], in the customer's time zone): nothing is planned inside
  them; the next run after they end sends it. A follow-up that could not go out within
  give_up_after of its due time is dropped (skipped), never sent days late.
It goes to the channel and address the customer last wrote from in that conversation, carrying the
conversation id, so email threads it ([#42] in the subject) and a reply reopens that conversation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import Config
from bot.intents import FollowUp, Outbound
from handlers import segments
from handlers.care import zone_of
from handlers.greetings import Reach, _hhmm, _in_quiet, choose_channel
from handlers.templating import TemplateProblem, Templates, language_of
from storage import campaigns as store
from storage import insight_followup as queries
from storage import outbox
from storage.db import Database
from storage.models import Customer

log = logging.getLogger("kefu.followup")

CAMPAIGN = "followup"
LOW_CSAT = 2
BATCH = 500


@dataclass(frozen=True, slots=True)
class Due:
    conversation_id: int
    customer_id: int
    resolution: int
    due_at: datetime
    trigger: str  # resolved | low_csat

    @property
    def occasion(self) -> str:
        return f"conversation:{self.conversation_id}:{self.resolution}"


@dataclass
class Outcome:
    sent: int = 0
    skipped: int = 0
    waiting: int = 0  # quiet hours: the next run after they end


class FollowUps:
    def __init__(self, config: Config, templates: Templates, reach: Reach) -> None:
        self.config = config
        self.cfg = config.campaigns.followup
        self.templates = templates
        self.reach = reach

    def validate(self) -> None:
        from bot.config import ConfigError

        try:
            self.templates.check(
                self.cfg.template, {"name": "王小明", "ticket": 42, "business": "kefu"}
            )
        except TemplateProblem as exc:
            raise ConfigError(
                f"[campaigns.followup] template has value {self.cfg.template!r}: {exc}"
            ) from None

    async def due(self, session: AsyncSession, now: datetime) -> list[Due]:
        """Resolved complaints and low scores whose follow-up is due now and not yet claimed."""
        cfg = self.cfg
        found: dict[str, Due] = {}
        for conv_id, cid, n, at in await queries.resolved_complaints(
            session, now, cfg.after, cfg.give_up_after, BATCH
        ):
            d = Due(conv_id, cid, n, at + cfg.after, "resolved")
            found[d.occasion] = d
        if cfg.low_csat:
            for conv_id, cid, n, at in await queries.low_scores(
                session, now, cfg.low_csat_after, cfg.give_up_after, LOW_CSAT, BATCH
            ):
                d = Due(conv_id, cid, n, at + cfg.low_csat_after, "low_csat")
                found.setdefault(d.occasion, d)
        if not found:
            return []
        taken = await queries.claimed(session, CAMPAIGN, list(found))
        return [d for key, d in found.items() if key not in taken]

    async def tick(self, db: Database, now: datetime) -> Outcome:
        outcome = Outcome()
        if not self.cfg.enabled:
            return outcome
        async with db.sessions() as session:
            due = await self.due(session, now)
        for d in due:
            async with db.transaction() as session:
                result = await self._one(session, d, now)
            if result == "sent":
                outcome.sent += 1
            elif result == "waiting":
                outcome.waiting += 1
            elif result == "skipped":
                outcome.skipped += 1
        if outcome.sent or outcome.skipped:
            log.info(
                "followup.plan sent=%d skipped=%d waiting=%d",
                outcome.sent,
                outcome.skipped,
                outcome.waiting,
            )
        return outcome

    async def _one(self, session: AsyncSession, d: Due, now: datetime) -> str:
        customer, conversation = await queries.customer_and_conversation(
            session, d.customer_id, d.conversation_id
        )
        if customer is None or conversation is None or conversation.status != "resolved":
            return "gone"
        skip = await self._why_not(session, customer)
        segment = self.cfg.segment
        if skip is None and segment is not None:
            inside = await segments.members_in(
                session, self.config, segment, now, among=[customer.id]
            )
            if customer.id not in inside:
                skip = f"not in segment {segment!r} ([campaigns.followup] segment)"
        zone = ZoneInfo(zone_of(customer, self.config))
        quiet = self.config.campaigns.quiet_hours
        if skip is None and quiet.enabled:
            local = now.astimezone(zone).time().replace(tzinfo=None)
            if _in_quiet(local, _hhmm(quiet.start), _hhmm(quiet.end)):
                return "waiting"
        where: tuple[str, str] | str | None = None
        if skip is None:
            identities = (await store.identities(session, [customer.id])).get(customer.id, [])
            last = (
                (conversation.reply_channel, conversation.reply_address)
                if conversation.reply_channel and conversation.reply_address
                else None
            )
            where = choose_channel(self.reach, customer.preferred_channel, last, identities)
            if isinstance(where, str):
                skip = where
        claimed = await store.claim(
            session,
            [
                {
                    "campaign": CAMPAIGN,
                    "occasion": d.occasion,
                    "customer_id": customer.id,
                    "status": "skipped" if skip else "planned",
                    "reason": skip,
                    "channel": where[0] if isinstance(where, tuple) else None,
                    "send_at": now,
                    "expires_at": d.due_at + self.cfg.give_up_after,
                    "created_at": now,
                }
            ],
        )
        if customer.id not in claimed:
            return "already"
        if skip is not None:
            log.info(
                "followup.skipped conversation=%s customer=%s reason=%s",
                d.conversation_id,
                customer.id,
                skip,
            )
            return "skipped"
        assert isinstance(where, tuple)
        language = language_of(customer.language, self.config.campaigns.default_language)
        text = self.templates.render(
            self.cfg.template,
            language,
            {
                "name": customer.display_name,
                "ticket": conversation.id,
                "business": self.config.campaigns.business_name,
            },
        )
        meta: dict[str, Any] = {
            "kind": "followup",
            "trigger": d.trigger,
            "resolution": d.resolution,
        }
        logged_id = await queries.log_sent(
            session,
            conversation_id=conversation.id,
            customer_id=customer.id,
            channel=where[0],
            author_id=f"campaign:{CAMPAIGN}",
            text=text,
            meta=meta,
            at=now,
        )
        out_id = await outbox.enqueue(
            session,
            Outbound(
                where[0],
                where[1],
                FollowUp(
                    text=text,
                    language=language,
                    conversation_id=conversation.id,
                    customer_id=customer.id,
                    campaign=CAMPAIGN,
                ),
                f"{CAMPAIGN}:{d.occasion}",
            ),
            interaction_id=logged_id,
        )
        if out_id is not None:
            await store.link_outbox(session, [(claimed[customer.id], out_id)])
        log.info(
            "followup.queued conversation=%s customer=%s channel=%s trigger=%s",
            d.conversation_id,
            customer.id,
            where[0],
            d.trigger,
        )
        return "sent"

    async def _why_not(self, session: AsyncSession, customer: Customer) -> str | None:
        if customer.forgotten_at is not None or customer.merged_into is not None:
            return "customer forgotten or merged"
        if self.cfg.consent == "marketing":
            return (
                None
                if customer.marketing_consent
                else 'no marketing consent ([campaigns.followup] consent = "marketing")'
            )
        if customer.marketing_consent:
            return None
        if await queries.opted_out(session, customer.id):
            return "the customer opted out"
        return None


def build(config: Config, templates: Templates, reach: Reach) -> FollowUps:
    segments.check_names(config)
    followups = FollowUps(config, templates, reach)
    if config.campaigns.followup.enabled:
        followups.validate()
    return followups
