"""Conversation lifecycle: open -> pending (waiting on the customer) -> resolved -> closed.

A customer's new message reopens a resolved conversation and brings a pending one back to open (the
pipeline does that); a closed one stays closed and the next message starts a new conversation.
Resolved conversations are closed after [lifecycle] auto_close_after without activity.

Every change is an event in the conversation's log and a row in audit_log. The functions take the
caller's session (one transaction with whatever else the caller does) and an Actor whose role is
checked: the CLI and the Telegram staff commands call the same functions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import Config
from handlers import roles, sla, survey
from handlers.roles import Actor
from handlers.routing import Router
from storage import audit, conversations, interactions
from storage.db import Database
from storage.models import STATUSES, Conversation, utcnow

log = logging.getLogger("kefu.lifecycle")

# status -> the statuses it may move to by hand.
MOVES: dict[str, tuple[str, ...]] = {
    "open": ("pending", "resolved", "closed"),
    "pending": ("open", "resolved", "closed"),
    "resolved": ("open", "closed"),
    "closed": (),
}
VERBS = {"open": "reopen", "pending": "pending", "resolved": "resolve", "closed": "close"}
AUTO_CLOSE_BATCH = 500


class LifecycleError(ValueError):
    """A change that cannot be made (unknown conversation, not allowed from its status)."""


@dataclass(frozen=True, slots=True)
class Change:
    conversation_id: int
    before: str
    after: str
    survey_id: int | None = None


def _check_role(actor: Actor, to: str, conversation: Conversation) -> None:
    subject = f"conversation {conversation.id}"
    if to in ("resolved", "pending"):
        roles.require_on(actor, VERBS[to], conversation.assignee, subject)
    else:
        roles.require(actor, VERBS[to], subject)


async def change(
    session: AsyncSession,
    conversation_id: int,
    to: str,
    actor: Actor,
    config: Config,
    *,
    now: datetime | None = None,
    reason: str | None = None,
) -> Change:
    if to not in STATUSES:
        raise LifecycleError(f"status has value {to!r}: use one of {', '.join(STATUSES)}")
    conversation = await conversations.for_change(session, conversation_id)
    if conversation is None:
        raise LifecycleError(f"no conversation {conversation_id}")
    _check_role(actor, to, conversation)
    before = conversation.status
    if before == to:
        raise LifecycleError(f"conversation {conversation_id} is already {to}")
    if to not in MOVES[before]:
        hint = (
            " (the customer's next message starts a new conversation)" if before == "closed" else ""
        )
        raise LifecycleError(
            f"conversation {conversation_id} is {before}: it cannot become {to}{hint}"
        )
    now = now or utcnow()
    conversation.status = to
    conversation.updated_at = now
    if to == "pending" and config.sla.pause_while_pending:
        sla.pause(conversation, now)
    elif conversation.sla_paused_at is not None:
        sla.resume(conversation, now, Router(config).clock(conversation.team))
    asked: int | None = None
    if to == "resolved":
        conversation.resolved_at = now
        conversation.resolutions = (conversation.resolutions or 0) + 1
        conversation.resolution_due_at = None
        conversation.sla_due_at = None
    elif to == "closed":
        conversation.closed_at = now
        conversation.sla_due_at = None
    elif to == "open":
        conversation.resolved_at = None
    record(session, conversation, actor, before, to, now, reason)
    if to == "resolved":
        await session.flush()
        made = await survey.ask(session, conversation, config, now=now)
        asked = made.id if made is not None else None
    return Change(conversation.id, before, to, asked)


def record(
    session: AsyncSession,
    conversation: Conversation,
    actor: Actor,
    before: str,
    after: str,
    now: datetime,
    reason: str | None = None,
) -> None:
    """The event line in the conversation's log and the audit row of one status change."""
    verb = VERBS[after]
    text = f"{before} -> {after} by {actor.name}" + (f": {reason}" if reason else "")
    meta = {
        "kind": "status",
        "from": before,
        "to": after,
        **({"staff_id": actor.staff_id} if actor.staff_id else {}),
    }
    interactions.conversation_event(
        session,
        conversation,
        text,
        meta,
        now,
        author_kind="system" if actor is roles.SYSTEM else "agent",
        author_id=actor.name,
    )
    audit.record(
        session, actor.name, f"conversation.{verb}", f"conversation:{conversation.id}",
        previous=before, status=after, role=actor.role, **({"reason": reason} if reason else {}),
    )
    log.info(
        "lifecycle.%s conversation=%s from=%s actor=%s", verb, conversation.id, before, actor.name
    )


class Move(Protocol):
    """change() to one status: resolve, reopen, pending, close."""

    async def __call__(
        self,
        session: AsyncSession,
        conversation_id: int,
        actor: Actor,
        config: Config,
        *,
        now: datetime | None = None,
    ) -> Change: ...


def _to(status: str, doc: str) -> Move:
    async def move(
        session: AsyncSession,
        conversation_id: int,
        actor: Actor,
        config: Config,
        *,
        now: datetime | None = None,
    ) -> Change:
        return await change(session, conversation_id, status, actor, config, now=now)

    move.__name__ = move.__qualname__ = VERBS[status]
    move.__doc__ = doc
    return move


resolve = _to("resolved", "Resolved: the survey goes out ([survey]); the customer's next message "
              "reopens it.")
reopen = _to("open", "Open again, by hand.")
pending = _to("pending", "Waiting on the customer; their next message makes it open again.")
close = _to("closed", "Closed: final; the customer's next message starts a new conversation.")


async def auto_close(db: Database, now: datetime, config: Config) -> int:
    """Closes resolved conversations quiet for [lifecycle] auto_close_after; returns how many.
    A job: the scheduler calls it with the real time, tests with theirs."""
    quiet_since = now - config.lifecycle.auto_close_after
    closed = 0
    while True:
        async with db.transaction() as session:
            batch = await conversations.resolved_quiet_since(
                session, quiet_since, AUTO_CLOSE_BATCH
            )
            for conversation in batch:
                conversation.status = "closed"
                conversation.closed_at = now
                conversation.sla_due_at = None
                record(session, conversation, roles.SYSTEM, "resolved", "closed", now,
                       f"no activity for {config.lifecycle.auto_close_after}")
        closed += len(batch)
        if len(batch) < AUTO_CLOSE_BATCH:
            return closed
