"""Email delivery events: a bounce (RFC 3464 delivery status notification) marks the failed
addresses unreachable, and staff see it in the conversation that addressed them.

Anyone can send a mail that looks like a bounce: one counts only for an address kefu really wrote
to, in the mail it quotes (its References or the returned headers name a Message-ID kefu sent to
that address). kefu's Message-IDs are random, so only the server that got kefu's mail knows one."""

from __future__ import annotations

from bot.effects import Effect, Effects, Event, Logged, Unreachable
from bot.lookup import Lookup

CHANNEL = "email"


async def on_bounce(reads: Lookup, logged: Logged) -> Effects | None:
    """Pipeline observer: reads what the bounce names; the pipeline writes what it returns."""
    inbound = logged.inbound
    if inbound.channel != CHANNEL or inbound.meta.get("kind") != "bounce":
        return None
    failed = [str(a).lower() for a in inbound.meta.get("failed_recipients", [])]
    quoted = [*inbound.thread, *inbound.reply_to]
    if failed and quoted:
        sent_to = await reads.addresses_sent(CHANNEL, quoted)
        ours = {a.lower() for a in sent_to}
        failed = [a for a in failed if a in ours]
    else:
        failed = []
    if not failed:
        return [
            Event(
                logged.customer.id,
                CHANNEL,
                "a bounce that names no mail kefu sent to the failed address: ignored",
                {"kind": "bounce_ignored", "bounce_interaction_id": logged.interaction_id},
                inbound.received_at,
            )
        ]
    status = inbound.meta.get("status") or "no status"
    effects: list[Effect] = []
    for address, customer_id in await reads.holders(CHANNEL, failed):
        effects.append(Unreachable(CHANNEL, address, f"bounced ({status})"))
        conversation_id = await reads.latest_reopenable(customer_id)
        if conversation_id is not None:
            effects.append(
                Event(
                    customer_id,
                    CHANNEL,
                    f"mail to {address} bounced ({status}); the address is marked unreachable",
                    {"kind": "bounced", "bounce_interaction_id": logged.interaction_id},
                    inbound.received_at,
                    conversation_id=conversation_id,
                )
            )
    return effects
