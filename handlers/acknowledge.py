"""Acknowledgements: a complaint gets its ticket number and the time by which it will be answered;
a message outside business hours gets the time the team is back. In the customer's language.

Never to channel events (auto-replies, bounces, edits): only a customer speaking is acknowledged.
Outside-hours acknowledgements go out at most once per [routing] acknowledge_every per conversation
and per address, so two auto-responders cannot keep each other busy; a complaint is acknowledged
once, when its conversation becomes one.
"""

from __future__ import annotations

import logging

from bot import intents
from bot.config import Config
from bot.effects import Acknowledged, Effect, Effects, Logged, Say
from bot.intents import Outbound
from bot.lookup import Lookup
from bot.messages import SPOKEN
from handlers import care
from handlers.templating import language_of

log = logging.getLogger("kefu.acknowledge")


class Acknowledger:
    """Pipeline observer, inside the transaction that logs the message."""

    def __init__(self, config: Config) -> None:
        self.config = config

    async def __call__(self, reads: Lookup, note: Logged) -> Effects | None:
        inbound, conversation, decision = note.inbound, note.conversation, note.decision
        cfg = self.config.routing
        if (
            inbound.kind not in SPOKEN
            or conversation is None
            or note.customer.forgotten_at is not None
        ):
            return None
        if inbound.meta.get("no_ack"):  # a channel's word: e.g. mail received days ago
            log.info(
                "ack.skipped conversation=%s reason=%s", conversation.id, inbound.meta["no_ack"]
            )
            return None
        complaint = cfg.acknowledge_complaints and decision.new_complaint
        outside = cfg.acknowledge_outside_hours and decision.outside_hours
        if not (complaint or outside):
            return None
        now = inbound.received_at
        if not complaint and await reads.acked_since(
            conversation.id, inbound.channel, inbound.address, now - cfg.acknowledge_every
        ):
            log.info("ack.skipped conversation=%s reason=recently acknowledged", conversation.id)
            return None
        customer = note.customer
        language = language_of(
            customer.language or inbound.language, self.config.campaigns.default_language
        )
        expected_at = (
            conversation.first_response_due_at if complaint else None
        ) or decision.expected_response_by or now
        zone = care.zone_of(customer, self.config)
        template = "ack_complaint" if complaint else "ack_outside_hours"
        text = care.texts(self.config).render(
            template,
            language,
            {
                "ticket": conversation.id,
                "expected": care.local_time(expected_at, zone),
                "name": customer.display_name,
                "business": cfg.business_name,
            },
        )
        reason = "complaint" if complaint else "outside_hours"
        effects: list[Effect] = [
            Say(
                Outbound(
                    inbound.channel,
                    inbound.address,
                    intents.Acknowledgement(
                        text=text,
                        language=language,
                        conversation_id=conversation.id,
                        customer_id=customer.id,
                        reason=reason,
                        expected_response_by=expected_at,
                        **care.answering(inbound),
                    ),
                    f"ack:{conversation.id}:{note.interaction_id}",
                ),
                {
                    "kind": "ack",
                    "reason": reason,
                    "expected_response_by": expected_at.isoformat(),
                },
                now,
            ),
            Acknowledged(conversation.id, inbound.channel, inbound.address, now),
        ]
        log.info(
            "ack.queued conversation=%s reason=%s expected=%s",
            conversation.id,
            reason,
            expected_at.isoformat(),
        )
        return effects
