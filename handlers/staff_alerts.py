"""Complaint flags and SLA escalations for staff: an event in the conversation's log always, and a
post in the staff group when there is one (StaffRoom.group: [telegram] staff_chat_id), in the
conversation's topic even when an agent handles it in their private chat: these need the team.

The post goes into the conversation's topic, after the mirror of the message that caused it (same
transaction, later outbox id, and the outbox sends one address's rows in order).
"""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession

from bot.effects import (
    ComplaintReasons,
    ConversationView,
    CustomerView,
    Effect,
    Effects,
    Event,
    Logged,
    Post,
    RaiseSeverity,
)
from bot.intents import Outbound, StaffNotice, StaffRoom
from bot.lookup import Lookup
from handlers import staff_feed
from handlers.routing import Router
from storage.models import Conversation, Customer, utcnow

log = logging.getLogger("kefu.staff_alerts")

SEVERITY_MARK = {"high": "🔴 HIGH", "normal": "🟠 normal"}
SEVERITY_RANK = {None: 0, "none": 0, "normal": 1, "high": 2}


def group_of(room: StaffRoom | None) -> StaffRoom | None:
    """The room if it has a staff group for alerts to go to, else None."""
    return room if room is not None and room.group is not None else None


async def post(
    session: AsyncSession,
    room: StaffRoom | None,
    conversation: Conversation | ConversationView,
    customer_name: str,
    text: str,
    dedupe_key: str,
    *,
    about: str = "complaint",
) -> int | None:
    """Queues `text` for the staff group now, in the conversation's topic, in the caller's
    transaction (a job's: SLA, churn); None without a staff group. `about`: complaint | sla |
    churn. Observers return alert() instead."""
    group = group_of(room)
    if group is None:
        return None
    out = _alert(group, conversation, customer_name, text, dedupe_key, about)
    # Merged into the topic's post still waiting, if any: alerts are part of the topic's feed.
    return await staff_feed.queue(session, out, addition=text, limit=staff_feed.limit(group))


def alert(
    room: StaffRoom,
    conversation: Conversation | ConversationView,
    customer_name: str,
    text: str,
    dedupe_key: str,
    about: str = "complaint",
) -> Post:
    """The effect for an alert in the conversation's topic in the room's staff group (merged
    into its waiting post)."""
    out = _alert(room, conversation, customer_name, text, dedupe_key, about)
    return staff_feed.post(room, out, addition=text)


def _alert(
    room: StaffRoom,
    conversation: Conversation | ConversationView,
    customer_name: str,
    text: str,
    dedupe_key: str,
    about: str,
) -> Outbound:
    from handlers.staff_group import topic_name

    notice = StaffNotice(
        text=text,
        conversation_id=conversation.id,
        customer_id=conversation.customer_id,
        about=about,
        # Opens the conversation's topic if no mirror did yet.
        topic=topic_name(conversation.id, customer_name, conversation.reply_channel or "—"),
        place=conversation.staff_thread or None,
    )
    assert room.group is not None, "alerts go to the staff group"
    return Outbound(room.channel, room.group, notice, dedupe_key)


def name_of(customer: Customer | CustomerView) -> str:
    return customer.display_name or f"customer {customer.id}"


async def staff_name(reads: Lookup, staff_id: int | None) -> str | None:
    if staff_id is None:
        return None
    member = await reads.staff_member(staff_id)
    return member.name if member is not None else None


class ComplaintAlerts:
    """Pipeline observer: a conversation that becomes a complaint, or whose complaint turns severe,
    is flagged to staff with severity, reasons, team and the assignee."""

    def __init__(self, router: Router, room: StaffRoom | None) -> None:
        self.router = router
        self.room = group_of(room)

    async def __call__(self, reads: Lookup, note: Logged) -> Effects | None:
        verdict, conversation = note.verdict, note.conversation
        if not verdict.is_complaint or conversation is None:
            return None
        effects: list[Effect] = [ComplaintReasons(conversation.id, verdict.reasons, utcnow())]
        before = conversation.severity
        worse = SEVERITY_RANK.get(verdict.severity, 1) > SEVERITY_RANK.get(before, 0)
        if worse:
            effects.append(RaiseSeverity(conversation.id, verdict.severity))
        if not (note.decision.new_complaint or worse):
            return effects  # the mirror of each further message already carries the mark
        assignee = await staff_name(reads, conversation.assignee)
        team = conversation.team or note.decision.team
        reasons = ", ".join(verdict.reasons) or "—"
        lines = [
            (
                f"⚠️ Complaint #{conversation.id} · "
                f"{SEVERITY_MARK.get(verdict.severity, verdict.severity)}"
                f" · priority {conversation.priority}"
            ),
            f"reasons: {reasons}",
            f"team {team} · assignee: "
            + (f"@{assignee}" if assignee else "nobody on duty — leads, please assign"),
        ]
        if note.decision.first_response_due is not None and conversation.first_response_at is None:
            lines.append(
                f"first response due {conversation.first_response_due_at:%Y-%m-%d %H:%M} UTC"
            )
        text = "\n".join(lines)
        effects.append(
            Event(
                conversation.customer_id,
                note.inbound.channel,
                text,
                {
                    "kind": "complaint_flagged",
                    "severity": verdict.severity,
                    "reasons": list(verdict.reasons),
                    "team": team,
                    "assignee": conversation.assignee,
                    "priority": conversation.priority,
                    "interaction": note.interaction_id,
                },
                note.inbound.received_at,
                conversation_id=conversation.id,
            )
        )
        if self.room is not None:
            effects.append(
                alert(
                    self.room, conversation, name_of(note.customer), text,
                    f"complaint:{conversation.id}:{note.interaction_id}",
                )
            )
        log.info(
            "complaint.flagged conversation=%s severity=%s reasons=%s team=%s assignee=%s",
            conversation.id, verdict.severity, reasons, team, assignee,
        )
        return effects
