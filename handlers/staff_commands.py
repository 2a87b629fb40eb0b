"""Staff commands in a conversation's topic: /claim, /assign, /resolve, /pending, /reopen, /close,
/note, /history, /whois, /vip, /tag. Each returns the short text posted back to the group; each is
audited.

Roles (handlers/roles.py) decide who may do what, as for the CLI; status changes go through
handlers/lifecycle.py, so /resolve sends the satisfaction survey. A refusal is a short reply and a
"staff.forbidden" audit row, and changes nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from bot.commands import StaffPost
from bot.config import Config
from bot.effects import Event
from handlers import lifecycle, roles
from handlers.roles import Actor
from storage import audit, conversations, customers, interactions, staff
from storage.models import Conversation, Customer, Staff, utcnow

log = logging.getLogger("kefu.staff_commands")

USAGE = (
    "Commands: /claim, /assign <staff>, /resolve, /pending, /reopen, /close, /note <text>, "
    "/history [n], /whois, /vip on|off, /tag <tag>"
)
HISTORY_DEFAULT = 10
HISTORY_MAX = 50
LINE_LIMIT = 200
# /name or /name@bot_username, then the arguments (which may span lines).
COMMAND = re.compile(r"/([A-Za-z0-9_]+)(?:@[A-Za-z0-9_]+)?(?:\s+(.*))?$", re.S)


@dataclass(frozen=True, slots=True)
class Context:
    session: AsyncSession
    member: Staff
    conversation: Conversation
    customer: Customer
    args: str
    post: StaffPost
    config: Config

    @property
    def subject(self) -> str:
        return f"conversation:{self.conversation.id}"

    @property
    def actor(self) -> Actor:
        return Actor.of(self.member)

    def require(self, action: str) -> None:
        roles.require(self.actor, action, f"conversation {self.conversation.id}")

    def audit(self, action: str, **detail: object) -> None:
        audit.record(
            self.session,
            self.member.name,
            f"staff.{action}",
            self.subject,
            staff_id=self.member.id,
            message=self.post.key,
            **detail,
        )

    def event(self, kind: str, text: str) -> None:
        """A line in the conversation's own log, so its history tells what staff did."""
        interactions.add_event(
            self.session,
            Event(
                self.conversation.customer_id,
                self.post.channel,  # written where staff work
                text,
                {"kind": kind, "staff_id": self.member.id},
                utcnow(),
                conversation_id=self.conversation.id,
                author_kind="agent",
                author_id=self.member.name,
            ),
        )


def parse(text: str) -> tuple[str, str] | None:
    """"/assign@kefu_bot alice" -> ("assign", "alice"); None for text that is not a command."""
    found = COMMAND.match(text.strip())
    if found is None:
        return None
    return found.group(1).lower(), (found.group(2) or "").strip()


async def run(
    session: AsyncSession,
    member: Staff,
    conversation: Conversation | None,
    name: str,
    args: str,
    post: StaffPost,
    config: Config,
) -> str:
    command = COMMANDS.get(name)
    if command is None:
        return f"Unknown command /{name}. {USAGE}"
    if conversation is None:
        return f"/{name} works inside a conversation's topic, or as a reply to its message."
    # Two staff members acting on one conversation at once (two /claim): each command decides on
    # the conversation as it is once the other has committed, locked customer first as the
    # pipeline locks them (storage.conversations.for_change; SQLite: the write transaction is
    # exclusive already).
    conversation = await conversations.for_change(session, conversation.id)
    if conversation is None:
        return "This conversation no longer exists."
    customer = await session.get(Customer, conversation.customer_id, populate_existing=True)
    assert customer is not None
    ctx = Context(session, member, conversation, customer, args, post, config)
    try:
        return await command(ctx)
    except roles.Forbidden as exc:
        # Every check comes before the first change, so the transaction holds only this row.
        ctx.audit("forbidden", command=name, role=member.role, reason=str(exc))
        log.info("staff_commands.forbidden staff=%s role=%s command=%s conversation=%s",
                 member.name, member.role, name, conversation.id)
        return f"⛔ /{name}: {exc}."


def _closed(ctx: Context) -> str | None:
    """Closed is final: nobody is left to answer, so nobody takes it (the customer's next message
    starts a new conversation, routed afresh)."""
    if ctx.conversation.status != "closed":
        return None
    return f"ℹ️ #{ctx.conversation.id} is closed: the customer's next message starts a new one."


async def claim(ctx: Context) -> str:
    roles.require_claim(ctx.actor, ctx.conversation.assignee, f"conversation {ctx.conversation.id}")
    if (closed := _closed(ctx)) is not None:
        return closed
    if ctx.conversation.assignee == ctx.member.id:
        return f"#{ctx.conversation.id} is already yours."
    before = ctx.conversation.assignee
    ctx.conversation.assignee = ctx.member.id
    ctx.event("assigned", f"claimed by {ctx.member.name}")
    ctx.audit("claim", previous=before)
    return f"✋ #{ctx.conversation.id} claimed by {ctx.member.name}."


async def assign(ctx: Context) -> str:
    ctx.require("assign")
    if (closed := _closed(ctx)) is not None:
        return closed
    name = ctx.args.strip().removeprefix("@")
    if not name:
        return "Usage: /assign <staff name>"
    target = await staff.by_name(ctx.session, name)
    if target is None or not target.active:
        return f"No active staff member named {name!r} (see `kefu staff list`)."
    before = ctx.conversation.assignee
    ctx.conversation.assignee = target.id
    ctx.event("assigned", f"assigned to {target.name} by {ctx.member.name}")
    ctx.audit("assign", assignee=target.id, assignee_name=target.name, previous=before)
    return f"👉 #{ctx.conversation.id} assigned to {target.name}."


Move = Callable[[AsyncSession, int, Actor, Config], Awaitable[lifecycle.Change]]


async def _move(ctx: Context, move: Move) -> lifecycle.Change | str:
    """A status change through the lifecycle (its event, audit row and role check), or why not."""
    try:
        return await move(ctx.session, ctx.conversation.id, ctx.actor, ctx.config)
    except lifecycle.LifecycleError as exc:
        return f"ℹ️ {exc}."


async def resolve(ctx: Context) -> str:
    change = await _move(ctx, lifecycle.resolve)
    if isinstance(change, str):
        return change
    survey = " 📋 Satisfaction survey sent to the customer." if change.survey_id is not None else ""
    return f"✅ #{ctx.conversation.id} resolved.{survey}"


async def pending(ctx: Context) -> str:
    change = await _move(ctx, lifecycle.pending)
    return (
        change
        if isinstance(change, str)
        else f"⏳ #{ctx.conversation.id} pending: waiting on the customer."
    )


async def reopen(ctx: Context) -> str:
    change = await _move(ctx, lifecycle.reopen)
    return change if isinstance(change, str) else f"🔄 #{ctx.conversation.id} reopened."


async def close(ctx: Context) -> str:
    change = await _move(ctx, lifecycle.close)
    return change if isinstance(change, str) else f"🔒 #{ctx.conversation.id} closed."


async def note(ctx: Context) -> str:
    ctx.require("note")
    text = ctx.args.strip()
    if not text:
        return "Usage: /note <text> (kept in the log, never sent to the customer)"
    row_id = await interactions.add_line(
        ctx.session,
        conversation_id=ctx.conversation.id,
        customer_id=ctx.conversation.customer_id,
        channel=ctx.post.channel,  # written where staff work
        direction="note",
        author_kind="agent",
        author_id=ctx.member.name,
        text=text,
        meta={"staff_id": ctx.member.id, "staff_message": ctx.post.key},
        at=utcnow(),
    )
    ctx.audit("note", interaction=row_id)
    return "📝 Note kept (not sent to the customer)."


ARROWS = {"in": "←", "out": "→", "note": "📝", "event": "·"}


async def history(ctx: Context) -> str:
    ctx.require("history")
    arg = ctx.args.strip() or str(HISTORY_DEFAULT)
    if not arg.isdigit() or not 1 <= int(arg) <= HISTORY_MAX:
        return f"Usage: /history [n], n from 1 to {HISTORY_MAX}"
    rows = await interactions.history(ctx.session, ctx.conversation.id, int(arg))
    ctx.audit("history", n=int(arg))
    if not rows:
        return f"#{ctx.conversation.id} has no history yet."
    lines = [f"🗂 #{ctx.conversation.id}, last {len(rows)}:"]
    for row in rows:
        text = row.text if len(row.text) <= LINE_LIMIT else row.text[:LINE_LIMIT] + "…"
        who = row.author_id if row.author_kind == "agent" else row.author_kind
        lines.append(
            f"{row.created_at:%m-%d %H:%M} {ARROWS.get(row.direction, '?')} {row.channel} "
            f"{who}: {text}"
        )
    return "\n".join(lines)


async def whois(ctx: Context) -> str:
    ctx.require("whois")
    customer = ctx.customer
    ids = await customers.identities_of(ctx.session, customer.id)
    ctx.audit("whois", customer=customer.id)
    lines = [
        f"👤 {customer.display_name or '—'} (customer {customer.id})",
        f"language {customer.language or '—'} · timezone {customer.timezone or '—'}"
        f" · VIP {'yes' if customer.vip else 'no'}",
        f"tags: {', '.join(customer.tags or []) or '—'}",
        f"#{ctx.conversation.id}: {ctx.conversation.status}, priority {ctx.conversation.priority}"
        f"{', complaint' if ctx.conversation.is_complaint else ''}",
    ]
    for identity in ids:
        reach = "" if identity.reachable else " (unreachable)"
        lines.append(f"· {identity.channel}: {identity.address}{reach}")
    return "\n".join(lines)


async def vip(ctx: Context) -> str:
    ctx.require("vip")
    arg = ctx.args.strip().lower()
    if arg not in ("on", "off"):
        return "Usage: /vip on|off"
    ctx.customer.vip = arg == "on"
    ctx.audit("vip", customer=ctx.customer.id, vip=ctx.customer.vip)
    return f"⭐ customer {ctx.customer.id} VIP {arg}."


async def tag(ctx: Context) -> str:
    ctx.require("tag")
    value = ctx.args.strip().lstrip("#").lower()
    if not value or len(value) > 40 or any(c.isspace() for c in value):
        return "Usage: /tag <tag> (one word, up to 40 characters)"
    tags = list(ctx.customer.tags or [])
    if value in tags:
        return f"customer {ctx.customer.id} already has tag {value}."
    # A new list, not an in-place append: the JSON column only notices assignment.
    ctx.customer.tags = sorted([*tags, value])
    ctx.audit("tag", customer=ctx.customer.id, tag=value)
    return f"🏷 customer {ctx.customer.id} tagged {value}."


COMMANDS: dict[str, Callable[[Context], Awaitable[str]]] = {
    "claim": claim,
    "assign": assign,
    "resolve": resolve,
    "pending": pending,
    "reopen": reopen,
    "close": close,
    "note": note,
    "history": history,
    "whois": whois,
    "vip": vip,
    "tag": tag,
}
