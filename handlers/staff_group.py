"""The staff room (bot.intents.StaffRoom: the Telegram staff group and agents' private chats, as
bot/app.py wires it): conversations shown there, and what agents write back.

Mirroring is a pipeline observer: each fresh inbound message with a conversation, from any channel,
is queued for staff in the same transaction as the log row: to the assigned agent's private chat
with the bot, or else to the conversation's forum topic in the staff group (created on first use),
merged into the post still waiting there (handlers/staff_feed.py keeps this within the staff
channel's limits). The group gets one line per conversation that is handled in a private chat.

StaffDesk.handle() takes a staff post, in the group or in a staff member's private chat: a plain
message in a conversation's topic (or a reply to a mirrored message) is an answer to the customer;
a /command acts on the conversation. Only active staff may do either, each within their role
(handlers/roles.py: status changes go through handlers/lifecycle.py, so /resolve asks the
satisfaction survey); everything they do is audited. One transaction per post, keyed by the post's
id, so a redelivered update does nothing twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from bot.commands import StaffPost
from bot.config import Config
from bot.effects import Effect, Effects, Logged, Observer, Post
from bot.intents import Outbound, StaffNotice, StaffRoom
from bot.lookup import Lookup, StaffView
from bot.messages import SPOKEN, Attachment
from handlers import agents, roles, staff_commands, staff_feed
from storage import audit, conversations, outbox, processed_messages, staff
from storage.db import Database
from storage.models import Conversation

log = logging.getLogger("kefu.staff_group")

PRIVATE_HINT = (
    "👋 Conversations assigned to you arrive here. Reply to one of them to answer the customer; "
    "commands (/resolve, /note …) work as replies too."
)
PREVIEW_LIMIT = 3500  # leaves room for the header inside Telegram's 4096
REFUSAL = "⛔ Only registered kefu staff can answer customers or use commands here."
REFUSAL_EVERY_SECONDS = (
    600.0  # one refusal per person per ten minutes is enough; the group is rate-limited
)

PRIORITY_MARK = {"urgent": "🔴 urgent", "high": "🟠 high", "low": "⚪ low"}


def topic_name(conversation_id: int, who: str, channel: str) -> str:
    """Like "#42 张三 · email": what agents scan in the group's topic list."""
    return f"#{conversation_id} {who} · {channel}"[:128]


def _size(n: int | None) -> str:
    if n is None:
        return ""
    return f" · {n / 1024:.0f} KB" if n >= 1024 else f" · {n} B"


def describe(attachment: Attachment) -> str:
    label = attachment.name or attachment.url or attachment.mime_type or ""
    caption = f' · "{attachment.caption}"' if attachment.caption else ""
    return f"📎 {attachment.kind}{f' {label}' if label else ''}{_size(attachment.size)}{caption}"


@dataclass(frozen=True, slots=True)
class _Seen:
    """The conversation and customer fields a mirror shows, read once."""

    conversation_id: int
    staff_thread: str | None
    is_complaint: bool
    priority: str
    customer_id: int
    name: str
    vip: bool


def _seen(note: Logged) -> _Seen:
    conversation, customer = note.conversation, note.customer
    assert conversation is not None
    return _Seen(
        conversation.id,
        conversation.staff_thread,
        bool(conversation.is_complaint),
        conversation.priority,
        customer.id,
        customer.display_name or f"customer {customer.id}",
        bool(customer.vip),
    )


def mirror_head(note: Logged, seen: _Seen) -> str:
    return f"📨 #{seen.conversation_id} · {seen.name} · {note.inbound.channel}"


def mirror_body(note: Logged, seen: _Seen) -> str:
    """What one message adds to a mirror: its marks, its text and its attachments."""
    inbound = note.inbound
    marks: list[str] = []
    if seen.is_complaint or note.verdict.is_complaint:
        severity = note.verdict.severity if note.verdict.is_complaint else "earlier"
        marks.append(f"⚠️ complaint ({severity})")
    if seen.priority in PRIORITY_MARK:
        marks.append(PRIORITY_MARK[seen.priority])
    if seen.vip:
        marks.append("⭐ VIP")
    lines: list[str] = []
    if marks:
        lines.append(" · ".join(marks))
    body = inbound.text
    if len(body) > PREVIEW_LIMIT:
        body = body[:PREVIEW_LIMIT] + f"… [{len(inbound.text)} characters; /history for the log]"
    if inbound.kind == "edit":
        body = f"✏️ edited: {body}"
    if body:
        lines.append(body)
    lines.extend(describe(a) for a in inbound.attachments)
    return "\n".join(lines)


def mirror_text(note: Logged, seen: _Seen) -> str:
    body = mirror_body(note, seen)
    return f"{mirror_head(note, seen)}\n{body}" if body else mirror_head(note, seen)


def board_line(seen: _Seen, channel: str, agent: str) -> str:
    """The group's one line for a conversation handled in an agent's private chat."""
    return f"👤 #{seen.conversation_id} {seen.name} · {channel} → {agent} (private chat)"


def board_key(room: StaffRoom) -> str:
    """The processed_messages channel of the group's "where it is handled" lines."""
    return f"{room.channel}-board"


def mirror_observer(room: StaffRoom) -> Observer:
    """Pipeline observer: each fresh inbound message with a conversation is queued for staff, in
    the same transaction: to the assigned agent's private chat, else the conversation's topic in
    the room's staff group; merged into the post still waiting there, if there is one
    (staff_feed)."""
    group = room.group
    if group is None:
        raise ValueError("the mirror needs a staff group")

    async def observe(reads: Lookup, note: Logged) -> Effects | None:
        if note.conversation is None or note.inbound.kind not in (*SPOKEN, "edit"):
            return None
        seen = _seen(note)
        # Media the staff channel itself holds (its own file ids) is copied into the post; the
        # rest is described in the text.
        media = tuple(
            a
            for a in note.inbound.attachments
            if a.file_id and note.inbound.channel == room.channel
        )
        notice = StaffNotice(
            text=mirror_text(note, seen),
            conversation_id=seen.conversation_id,
            customer_id=seen.customer_id,
            attachments=media,
            about="mirror",
            topic=topic_name(seen.conversation_id, seen.name, note.inbound.channel),
            place=seen.staff_thread or None,
        )
        out = Outbound(room.channel, group, notice, f"mirror-{note.interaction_id}")
        effects: list[Effect] = []
        member = await staff_feed.agent_of(reads, note.conversation)
        if member is not None:
            out = staff_feed.for_agent(out, member)
            effects.append(_board(room, group, seen, note.inbound.channel, member))
        addition = mirror_body(note, seen)
        effects.append(
            staff_feed.post(room, out, addition=addition, interaction_id=note.interaction_id)
        )
        return effects

    return observe


def _board(room: StaffRoom, group: str, seen: _Seen, channel: str, member: StaffView) -> Post:
    """Once per conversation and agent: a line in the group saying where it is handled. Lines
    waiting together go out as one post, so this costs the group almost nothing at any rate."""
    line = board_line(seen, channel, member.name)
    return staff_feed.post(
        room,
        Outbound(
            room.channel,
            group,
            StaffNotice(text=line, about="board"),
            f"board-{seen.conversation_id}-{member.id}",
        ),
        addition=line,
        once=(board_key(room), f"board:{seen.conversation_id}:{member.id}", seen.conversation_id),
    )


async def staff_telegram_ids(db: Database) -> set[int]:
    """Telegram accounts of active staff: their private messages to the bot are staff posts."""
    async with db.sessions() as session:
        return await staff.telegram_ids(session)


async def thread_of(db: Database, conversation_id: int) -> str | None:
    """The place the staff channel gave the conversation (its topic), for the channel's lookup."""
    async with db.sessions() as session:
        return await conversations.staff_place_of(session, conversation_id)


async def save_thread(db: Database, conversation_id: int, thread: str) -> None:
    async with db.transaction() as session:
        await conversations.set_staff_place(session, conversation_id, thread)


async def first_time(
    session: AsyncSession, key: str, conversation_id: int | None, channel: str
) -> bool:
    """Claims the idempotency key inside the caller's transaction; False if it was seen before."""
    return await processed_messages.claim(session, channel, key, conversation_id)


class StaffDesk:
    def __init__(
        self,
        db: Database,
        *,
        config: Config | None = None,
        on_commit: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.config = config if config is not None else Config()
        self.on_commit = on_commit
        self.clock = clock
        self._refused: dict[int | None, float] = {}

    async def handle(self, post: StaffPost) -> str:
        """Acts on one staff-group post; returns what it did (for logs and tests)."""
        async with self.db.transaction() as session:
            conversation = await self._conversation_of(session, post)
            if not await first_time(
                session, post.key, conversation.id if conversation else None, post.channel
            ):
                return "duplicate"
            outcome = await self._act(session, post, conversation)
        if self.on_commit is not None:
            self.on_commit()
        log.info(
            "staff_group.post chat=%s message=%s user=%s conversation=%s outcome=%s",
            post.chat_id, post.message_id, post.user_id,
            conversation.id if conversation else None, outcome,
        )
        return outcome

    async def _act(
        self, session: AsyncSession, post: StaffPost, conversation: Conversation | None
    ) -> str:
        command = staff_commands.parse(post.text)
        if conversation is None and (command is None or (post.private and command[0] == "start")):
            if post.private:
                # A staff member's own chat with the bot (their /start, or a message that is not
                # a reply): say how it works, once per message.
                await self._notice(session, post, None, PRIVATE_HINT)
                return "hint"
            return "ignored"  # people talk in the group too; only threads and commands count
        member = None
        if post.user_id is not None:
            member = await staff.active_by_telegram_id(session, post.user_id)
        subject = (
            f"conversation:{conversation.id}" if conversation else f"{post.channel}:{post.chat_id}"
        )
        if member is None:
            audit.record(
                session,
                f"{post.channel}:{post.user_id}",
                "staff.refused",
                subject,
                name=post.user_name,
                message=post.key,
                command=command[0] if command else None,
            )
            last = self._refused.get(post.user_id)
            now = self.clock()
            if last is None or now - last > REFUSAL_EVERY_SECONDS:
                self._refused[post.user_id] = now
                await self._notice(session, post, conversation, REFUSAL)
            return "refused"
        if command is not None:
            name, args = command
            reply = await staff_commands.run(
                session, member, conversation, name, args, post, self.config
            )
            await self._notice(session, post, conversation, reply)
            return f"command:{name}"
        assert conversation is not None
        if not roles.allowed(member.role, "reply"):
            # Every role may reply today; a staff row with an unknown role may not.
            audit.record(session, member.name, "staff.forbidden", f"conversation:{conversation.id}",
                         staff_id=member.id, message=post.key, command="reply", role=member.role)
            await self._notice(
                session, post, conversation, f"⛔ {member.name} ({member.role}) may not reply."
            )
            return "forbidden"
        if not post.text.strip():
            await self._notice(
                session,
                post,
                conversation,
                "📎 Attachments are not forwarded to customers yet: send text.",
            )
            return "no_text"
        try:
            answer = await agents.answer(
                session,
                conversation.id,
                post.text,
                agent=member.name,
                staff_id=member.id,
                meta={"via": post.channel, "staff_message": post.key},
            )
        except agents.AnswerError as exc:
            await self._notice(session, post, conversation, f"❌ Not sent: {exc}")
            return "answer_failed"
        if post.has_media:
            await self._notice(
                session,
                post,
                conversation,
                "📎 The text was sent; attachments are not forwarded yet.",
            )
        return f"answer:{answer.interaction_id}"

    async def _conversation_of(self, session: AsyncSession, post: StaffPost) -> Conversation | None:
        if post.thread_id is not None:
            found = await conversations.by_staff_place(session, str(post.thread_id))
            if found is not None:
                return found
        if post.reply_to_message_id is None:
            return None
        replied = f"{post.chat_id}:{post.reply_to_message_id}"
        conversation_id = await outbox.conversation_of_sent(
            session, post.channel, replied
        ) or await processed_messages.conversation_of(
            # A reply to an agent's own earlier answer in the group stays in that conversation.
            session, post.channel, replied
        )
        return await conversations.by_id(session, conversation_id) if conversation_id else None

    async def _notice(
        self, session: AsyncSession, post: StaffPost, conversation: Conversation | None, text: str
    ) -> None:
        notice = StaffNotice(
            text=text,
            conversation_id=conversation.id if conversation else None,
            about="answer",
            answers=(post.key,),
            place=str(post.thread_id) if post.thread_id is not None else None,
            agent=post.user_name if post.private else None,
        )
        # Where the post was written: the group, or an agent's private chat with the bot.
        await outbox.enqueue(
            session,
            Outbound(post.channel, str(post.chat_id), notice, f"staff-notice-{post.key}"),
        )
