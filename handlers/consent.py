"""Opt-out: a whole message of 退订, TD, unsubscribe or stop, on any channel, withdraws marketing
consent, cancels greetings not yet sent, and is confirmed in the customer's language.

Only the whole message counts ("stop" yes, "please don't stop my order" no): a customer who
mentions the word in a complaint has not asked to be unsubscribed.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable

from sqlalchemy.ext.asyncio import AsyncSession

from bot import outbox
from bot.intents import Notice, Outbound
from bot.language import CJK
from bot.messages import SPOKEN
from bot.pipeline import Logged
from handlers.templating import Templates, language_of
from storage import campaigns as store
from storage.models import Interaction, utcnow

log = logging.getLogger("kefu.consent")

OPT_OUT_WORDS = ("退订", "取消订阅", "td", "unsubscribe", "stop")
_EDGES = re.compile(r"^[\s\W_]+|[\s\W_]+$")


def normalise(text: str) -> str:
    """NFKC (full-width ＴＤ -> TD), case-folded, without surrounding spaces and punctuation."""
    return _EDGES.sub("", unicodedata.normalize("NFKC", text)).casefold()


class ConsentObserver:
    """A pipeline observer: runs inside the transaction that logs the message."""

    def __init__(
        self, templates: Templates, extra_words: Iterable[str] = (), business: str = "kefu"
    ) -> None:
        self.templates = templates
        self.words = {normalise(w) for w in (*OPT_OUT_WORDS, *extra_words) if normalise(w)}
        self.business = business

    def is_opt_out(self, text: str) -> bool:
        return normalise(text) in self.words

    async def __call__(self, session: AsyncSession, logged: Logged) -> None:
        inbound = logged.inbound
        if inbound.kind not in SPOKEN or not self.is_opt_out(inbound.text):
            return
        customer = logged.customer
        now = utcnow()
        word = inbound.text.strip()
        if inbound.meta.get("sender_verified") is False:
            # Anyone can write any From: an unauthenticated mail does not speak for the customer.
            session.add(
                Interaction(
                    conversation_id=logged.conversation.id
                    if logged.conversation is not None
                    else None,
                    customer_id=customer.id,
                    channel=inbound.channel,
                    direction="event",
                    author_kind="system",
                    text=f"opt-out {word!r} not applied: the sender could not be authenticated "
                    "(no DMARC or DKIM pass); consent is unchanged",
                    meta={"kind": "consent_unverified", "interaction_id": logged.interaction_id},
                    created_at=now,
                )
            )
            log.warning(
                "consent.unverified customer=%s channel=%s: not withdrawn",
                customer.id,
                inbound.channel,
            )
            return
        had_consent = customer.marketing_consent
        customer.marketing_consent = False
        cancelled = await store.cancel_for(
            session, customer.id, f"consent withdrawn ({word!r} on {inbound.channel})", now
        )
        conversation_id = logged.conversation.id if logged.conversation is not None else None
        session.add(
            Interaction(
                conversation_id=conversation_id,
                customer_id=customer.id,
                channel=inbound.channel,
                direction="event",
                author_kind="system",
                text=f"marketing consent withdrawn: the customer wrote {word!r}",
                meta={
                    "kind": "consent_withdrawn",
                    "had_consent": had_consent,
                    "cancelled": cancelled,
                },
                created_at=now,
            )
        )
        # Their own language if known, else the language of the word they used.
        fallback = "zh" if CJK.search(word) else "en"
        language = language_of(customer.language, fallback) if customer.language else fallback
        text = self.templates.render("optout_confirm", language, {"business": self.business})
        await outbox.say(
            session,
            Outbound(
                inbound.channel,
                inbound.address,
                # No language: as before, the channel's own wording follows the text's.
                Notice(
                    text=text,
                    conversation_id=conversation_id,
                    customer_id=customer.id,
                    about="optout",
                ),
                f"optout:{logged.interaction_id}",
            ),
            log_meta={"kind": "optout_confirm"},
            at=now,
        )
        log.info(
            "consent.withdrawn customer=%s channel=%s had_consent=%s cancelled=%d",
            customer.id, inbound.channel, had_consent, cancelled,
        )
