"""Where staff traffic goes, and how it is kept within Telegram's limits at any inbound rate.

Telegram lets a bot post 20 messages a minute into one group and about one a second into one
private chat. So staff traffic is shaped before it is queued:

- What waits for one place (a conversation's topic, the conversation in an agent's private chat,
  the group's list of where conversations are handled) is coalesced: a new message is appended to
  the post that is still waiting there, instead of becoming a post of its own. However fast
  customers write, each place needs at most one post per turn it gets.
- The group gets only what needs the team: conversations nobody is assigned to (in their topic),
  complaints and escalations, and one line per conversation saying where it is handled.
- A conversation assigned to an active agent with a Telegram account goes to that agent's private
  chat with the bot, where the agent answers by replying to it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot.effects import ConversationView
from bot.intents import Outbound, StaffNotice, from_payload, to_payload
from bot.text import utf16_len
from storage import outbox, staff
from storage.db import Database
from storage.models import Conversation, Staff

# A coalesced post stays one Telegram message (4096 UTF-16 units), with room for the header.
POST_LIMIT = 4000
# Rows that may take more text: staff posts that are a feed, not an answer to someone.
FEED_PREFIXES = ("mirror-", "complaint:", "sla:", "board-")
# Claimed rows ("sending") still take text until the channel takes them for the wire (take()):
# the outbox sends a claimed batch in order, and a message arriving meanwhile would otherwise wait
# for the next batch.
OPEN = ("pending", "deferred", "failed", "sending")


async def agent_of(
    session: AsyncSession, conversation: Conversation | ConversationView
) -> Staff | None:
    """The agent whose private chat gets this conversation, or None (then: the staff group)."""
    if conversation.assignee is None:
        return None
    member = await staff.by_id(session, conversation.assignee)
    if member is None or not member.active or member.telegram_user_id is None:
        return None
    return member


async def queue(
    session: AsyncSession,
    out: Outbound,
    *,
    addition: str,
    interaction_id: int | None = None,
) -> int | None:
    """Queues a feed post, or appends `addition` to the one still waiting for the same place (not
    yet taken for the wire, see take()).

    Returns the id of the row the text went into. Posts with attachments are never merged: a
    partly sent one (text sent, photo deferred) must not change under the channel's feet."""
    if not out.attachments:
        merged = await _append(session, out, addition)
        if merged is not None:
            return merged
    return await outbox.enqueue(session, out, interaction_id=interaction_id)


async def _append(session: AsyncSession, out: Outbound, addition: str) -> int | None:
    # A row being claimed right now is skipped: the text then gets a post of its own.
    found = await outbox.last_open(
        session, out.channel, out.address, out.conversation_id, OPEN
    )
    if found is None:
        return None
    row_id, payload, key = found
    if not key.startswith(FEED_PREFIXES) or payload.get("attachments") or taken(payload):
        return None
    post = from_payload(payload, address=out.address)
    if not isinstance(post, StaffNotice):
        return None
    text = f"{post.text}\n{addition}"
    if utf16_len(text) > POST_LIMIT:
        return None
    new_payload = to_payload(replace(post, text=text, merged=post.merged + 1))
    await outbox.set_payload(session, row_id, new_payload)
    return row_id


async def take(db: Database, key: str) -> dict[str, Any] | None:
    """The channel is about to send this staff post (`key`: the row's idempotency key, as the
    channel gets it): from now on its text is final. Returns the post as it is now, with
    everything merged into it so far (None: no such row)."""
    async with db.transaction() as session:
        found = await outbox.by_key_locked(session, key)  # a merge in progress finishes
        if found is None:
            return None
        row_id, payload = found
        if taken(payload):
            return dict(payload)
        # Delivery state beside the intent, not part of it: nothing is merged into it any more.
        final = {**payload, "taken": True}
        await outbox.set_payload(session, row_id, final)
        return final


def taken(payload: dict[str, Any]) -> bool:
    """Whether the channel took the post for the wire (rows queued before intents kept the flag
    in meta.staff)."""
    legacy = (payload.get("meta") or {}).get("staff") or {}
    return bool(payload.get("taken") or legacy.get("taken"))


def for_agent(out: Outbound, member: Staff) -> Outbound:
    """The same post, to the agent's private chat (the group, with its topic, if that fails)."""
    assert member.telegram_user_id is not None
    notice = out.intent
    assert isinstance(notice, StaffNotice)
    direct = replace(notice, agent=member.name, fallback=out.address, place=None)
    return out.with_intent(direct, address=str(member.telegram_user_id))
