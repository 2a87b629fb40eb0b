"""Agents answer conversations: the answer is logged and sent on the customer's own channel."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot.intents import Outbound, Reply
from bot.messages import logged_thread
from handlers import care
from storage import audit, conversations, customers, interactions, outbox
from storage.models import utcnow


class AnswerError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Answer:
    interaction_id: int
    outbox_id: int | None
    channel: str
    address: str


async def answer(
    session: AsyncSession,
    conversation_id: int,
    text: str,
    *,
    agent: str,
    staff_id: int | None = None,
    meta: dict[str, Any] | None = None,
) -> Answer:
    """Logs the answer and queues it on the customer's channel. `meta` records where it was
    written (the staff group's message), `staff_id` which registered staff member wrote it."""
    text = text.strip()
    if not text:
        raise AnswerError("the answer is empty")
    conversation = await conversations.by_id(session, conversation_id)
    if conversation is None:
        raise AnswerError(f"no conversation {conversation_id}")
    customer = await customers.by_id(session, conversation.customer_id)
    if customer is None or customer.forgotten_at is not None:
        raise AnswerError(f"the customer of conversation {conversation_id} was forgotten")
    if not conversation.reply_channel or not conversation.reply_address:
        raise AnswerError(f"conversation {conversation_id} has no channel to answer on")
    now = utcnow()
    # What the customer's client needs to thread the answer (email In-Reply-To, Telegram reply).
    last_in = await interactions.last_inbound(session, conversation.id, conversation.reply_channel)
    thread: dict[str, Any] = {}
    if last_in is not None and last_in.external_id:
        earlier, title = logged_thread(last_in.meta)
        thread = care.thread_of(earlier, last_in.external_id, title)
    reply = Outbound(
        conversation.reply_channel,
        conversation.reply_address,
        Reply(
            # No language: the channel's own wording follows the language the agent wrote in.
            text=text,
            conversation_id=conversation.id,
            customer_id=conversation.customer_id,
            **thread,
        ),
        "",  # keyed by its log line, below
    )
    logged_id = await outbox.log_line(
        session,
        reply,
        author_kind="agent",
        author_id=agent,
        meta={**(meta or {}), **({"staff_id": staff_id} if staff_id is not None else {})},
        at=now,
    )
    outbox_id = await outbox.enqueue(
        session, replace(reply, dedupe_key=f"reply-{logged_id}"), interaction_id=logged_id
    )
    if conversation.first_response_at is None:
        conversation.first_response_at = now
    conversation.updated_at = now
    audit.record(
        session,
        agent,
        "reply",
        f"conversation:{conversation.id}",
        interaction=logged_id,
        **({"staff_id": staff_id} if staff_id is not None else {}),
    )
    return Answer(logged_id, outbox_id, conversation.reply_channel, conversation.reply_address)
