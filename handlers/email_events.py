"""Email delivery events: a bounce (RFC 3464 delivery status notification) marks the failed
addresses unreachable, and staff see it in the conversation that addressed them.

Anyone can send a mail that looks like a bounce: one counts only for an address kefu really wrote
to, in the mail it quotes (its References or the returned headers name a Message-ID kefu sent to
that address). kefu's Message-IDs are random, so only the server that got kefu's mail knows one."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.pipeline import Logged
from storage.models import REOPENABLE, Conversation, Identity, Interaction, OutboxRow

CHANNEL = "email"


async def on_bounce(session: AsyncSession, logged: Logged) -> None:
    """Pipeline observer; runs inside the transaction that logs the bounce."""
    inbound = logged.inbound
    if inbound.channel != CHANNEL or inbound.meta.get("kind") != "bounce":
        return
    failed = [str(a).lower() for a in inbound.meta.get("failed_recipients", [])]
    quoted = [str(r) for r in (*inbound.meta.get("references", []), *inbound.reply_to)]
    if failed and quoted:
        sent_to = await session.scalars(
            select(OutboxRow.address).where(
                OutboxRow.channel == CHANNEL, OutboxRow.external_id.in_(quoted)
            )
        )
        ours = {a.lower() for a in sent_to}
        failed = [a for a in failed if a in ours]
    else:
        failed = []
    if not failed:
        session.add(
            Interaction(
                customer_id=logged.customer.id,
                channel=CHANNEL,
                direction="event",
                author_kind="system",
                text="a bounce that names no mail kefu sent to the failed address: ignored",
                meta={"kind": "bounce_ignored", "bounce_interaction_id": logged.interaction_id},
                created_at=inbound.received_at,
            )
        )
        return
    status = inbound.meta.get("status") or "no status"
    identities = await session.scalars(
        select(Identity).where(Identity.channel == CHANNEL, Identity.address.in_(failed))
    )
    for identity in identities:
        identity.reachable = False
        identity.unreachable_reason = f"bounced ({status})"
        conversation = await session.scalar(
            select(Conversation)
            .where(
                Conversation.customer_id == identity.customer_id,
                Conversation.status.in_(REOPENABLE),
            )
            .order_by(Conversation.id.desc())
            .limit(1)
        )
        if conversation is not None:
            session.add(
                Interaction(
                    conversation_id=conversation.id,
                    customer_id=identity.customer_id,
                    channel=CHANNEL,
                    direction="event",
                    author_kind="system",
                    text=(
                        f"mail to {identity.address} bounced ({status}); "
                        "the address is marked unreachable"
                    ),
                    meta={"kind": "bounced", "bounce_interaction_id": logged.interaction_id},
                    created_at=inbound.received_at,
                )
            )
