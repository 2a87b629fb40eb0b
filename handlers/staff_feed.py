"""Where staff traffic goes, and how it is kept within the staff channel's limits at any inbound
rate.

A staff channel limits how often a bot may post (Telegram: 20 messages a minute into one group,
about one a second into one private chat). So staff traffic is shaped before it is queued:

- What waits for one place (a conversation's topic, the conversation in an agent's private chat,
  the group's list of where conversations are handled) is coalesced: a new message is appended to
  the post that is still waiting there, instead of becoming a post of its own. However fast
  customers write, each place needs at most one post per turn it gets.
- The group gets only what needs the team: conversations nobody is assigned to (in their topic),
  complaints and escalations, and one line per conversation saying where it is handled.
- A conversation assigned to an active agent with an account on the staff channel goes to that
  agent's private chat with the bot, where the agent answers by replying to it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot.effects import ConversationView, Feed, Post
from bot.intents import Outbound, StaffNotice, StaffRoom
from bot.lookup import Lookup, StaffView
from storage import outbox
from storage.db import Database
from storage.models import Conversation

# A coalesced post stays one message on the staff channel (StaffRoom.max_text), with room to spare.
SPARE = 96
# Rows that may take more text: staff posts that are a feed, not an answer to someone.
FEED_PREFIXES = ("mirror-", "complaint:", "sla:", "board-")


async def agent_of(
    reads: Lookup, conversation: Conversation | ConversationView
) -> StaffView | None:
    """The agent whose private chat gets this conversation, or None (then: the staff group)."""
    if conversation.assignee is None:
        return None
    member = await reads.staff_member(conversation.assignee)
    if member is None or not member.active or member.telegram_user_id is None:
        return None
    return member


def limit(room: StaffRoom) -> int | None:
    """How long a post in the room may grow by merging (UTF-16 units; None: no limit)."""
    return None if room.max_text is None else room.max_text - SPARE


async def queue(
    session: AsyncSession,
    out: Outbound,
    *,
    addition: str,
    limit: int | None,
    interaction_id: int | None = None,
) -> int | None:
    """Queues a feed post now, in the caller's transaction (a job's: SLA, churn), or appends
    `addition` to the one still waiting for the same place (not yet taken for the wire, see
    take()) while it stays within `limit`. Returns the id of the row the text went into.
    Observers return post() instead."""
    merged = await outbox.append_to_waiting(session, out, addition, FEED_PREFIXES, limit)
    if merged is not None:
        return merged
    return await outbox.enqueue(session, out, interaction_id=interaction_id)


def post(
    room: StaffRoom,
    out: Outbound,
    *,
    addition: str,
    interaction_id: int | None = None,
    once: tuple[str, str, int | None] | None = None,
) -> Post:
    """The effect an observer returns for a feed post in `room`: queued, or merged into the post
    waiting for the same place, by the pipeline in its transaction."""
    return Post(
        out, interaction_id, Feed(addition, FEED_PREFIXES, limit(room)), once=once
    )


async def take(db: Database, key: str) -> dict[str, Any] | None:
    """The channel is about to send this staff post (`key`: the row's idempotency key, as the
    channel gets it): from now on its text is final. Returns the post as it is now, with
    everything merged into it so far (None: no such row)."""
    async with db.transaction() as session:
        found = await outbox.by_key_locked(session, key)  # a merge in progress finishes
        if found is None:
            return None
        row_id, payload = found
        if outbox.taken(payload):
            return dict(payload)
        # Delivery state beside the intent, not part of it: nothing is merged into it any more.
        final = {**payload, "taken": True}
        await outbox.set_payload(session, row_id, final)
        return final


def for_agent(out: Outbound, member: StaffView) -> Outbound:
    """The same post, to the agent's private chat (the group, with its topic, if that fails)."""
    assert member.telegram_user_id is not None
    notice = out.intent
    assert isinstance(notice, StaffNotice)
    direct = replace(notice, agent=member.name, fallback=out.address, place=None)
    return out.with_intent(direct, address=str(member.telegram_user_id))
