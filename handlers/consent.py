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

from bot.effects import Effects, Event, Logged, Say, WithdrawConsent
from bot.intents import Notice, Outbound
from bot.language import CJK
from bot.lookup import Lookup
from bot.messages import SPOKEN
from handlers.templating import Templates, language_of
from storage.models import utcnow

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

    async def __call__(self, reads: Lookup, logged: Logged) -> Effects | None:
        inbound = logged.inbound
        if inbound.kind not in SPOKEN or not self.is_opt_out(inbound.text):
            return None
        customer = logged.customer
        now = utcnow()
        word = inbound.text.strip()
        conversation_id = logged.conversation.id if logged.conversation is not None else None
        if inbound.meta.get("sender_verified") is False:
            # Anyone can write any From: an unauthenticated mail does not speak for the customer.
            log.warning(
                "consent.unverified customer=%s channel=%s: not withdrawn",
                customer.id,
                inbound.channel,
            )
            return [
                Event(
                    customer.id,
                    inbound.channel,
                    f"opt-out {word!r} not applied: the sender could not be authenticated "
                    "(no DMARC or DKIM pass); consent is unchanged",
                    {"kind": "consent_unverified", "interaction_id": logged.interaction_id},
                    now,
                    conversation_id=conversation_id,
                )
            ]
        had_consent = customer.marketing_consent
        # Their own language if known, else the language of the word they used.
        fallback = "zh" if CJK.search(word) else "en"
        language = language_of(customer.language, fallback) if customer.language else fallback
        text = self.templates.render("optout_confirm", language, {"business": self.business})
        log.info(
            "consent.withdrawn customer=%s channel=%s had_consent=%s",
            customer.id, inbound.channel, had_consent,
        )
        return [
            WithdrawConsent(
                customer.id,
                f"consent withdrawn ({word!r} on {inbound.channel})",
                now,
                Event(
                    customer.id,
                    inbound.channel,
                    f"marketing consent withdrawn: the customer wrote {word!r}",
                    {"kind": "consent_withdrawn", "had_consent": had_consent},
                    now,
                    conversation_id=conversation_id,
                ),
            ),
            Say(
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
                {"kind": "optout_confirm"},
                now,
            ),
        ]
