"""Email delivery events: a bounce (RFC 3464 delivery status notification) marks the failed
addresses unreachable, and staff see it in the conversation that addressed them.

Anyone can send a mail that looks like a bounce: one counts only for an address kefu really wrote
to, in the mail it quotes (its References or the returned headers name a Message-ID kefu sent to
that address). kefu's Message-IDs are random, so only the server that got kefu's mail knows one.

The rule names no channel: a bounce is an event of kind "bounce" (channels/email.py makes one of
a delivery status notification) naming the failed addresses and the ids of the messages it
returns, on the channel that sent them; bot/app.py registers it where that channel runs."""

from __future__ import annotations

from bot.effects import Effect, Effects, Event, Logged, Unreachable
from bot.lookup import Lookup


async def on_bounce(reads: Lookup, logged: Logged) -> Effects | None:
    """Pipeline observer: reads what the bounce names; the pipeline writes what it returns."""
    inbound = logged.inbound
    if inbound.meta.get("kind") != "bounce":
        return None
    channel = inbound.channel  # the one that sent what bounced
    failed = [str(a).lower() for a in inbound.meta.get("failed_recipients", [])]
    quoted = [*inbound.thread, *inbound.reply_to]
    if failed and quoted:
        sent_to = await reads.addresses_sent(channel, quoted)
        ours = {a.lower() for a in sent_to}
        failed = [a for a in failed if a in ours]
    else:
        failed = []
    if not failed:
        return [
            Event(
                logged.customer.id,
                channel,
                "a bounce that names no mail kefu sent to the failed address: ignored",
                {"kind": "bounce_ignored", "bounce_interaction_id": logged.interaction_id},
                inbound.received_at,
            )
        ]
    status = inbound.meta.get("status") or "no status"
    effects: list[Effect] = []
    for address, customer_id in await reads.holders(channel, failed):
        effects.append(Unreachable(channel, address, f"bounced ({status})"))
        conversation_id = await reads.latest_reopenable(customer_id)
        if conversation_id is not None:
            effects.append(
                Event(
                    customer_id,
                    channel,
                    f"mail to {address} bounced ({status}); the address is marked unreachable",
                    {"kind": "bounced", "bounce_interaction_id": logged.interaction_id},
                    inbound.received_at,
                    conversation_id=conversation_id,
                )
            )
    return effects
