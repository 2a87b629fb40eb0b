"""SLA: first-response and resolution targets per priority ([sla]); a breach is escalated once.

check(db, now, ...) is the scheduler's job (tests call it with their own clock). A conversation
past a due time gets one sla_breaches row per target and resolution cycle (the unique key makes a
second run, or a second kefu process, a no-op), an event in its log, and a post to the staff group
naming the team's leads. Pending conversations wait on the customer: their resolution clock does
not escalate, their first response still does; with [sla] pause_while_pending neither runs, and
the customer's answer moves both due times on by the business time spent waiting (pause/resume).
Due times are counted in the team's business hours (handlers/business_hours.py), so nothing is
due, or escalated, while the team is closed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from bot.effects import SlaDue
from bot.intents import StaffRoom
from handlers import staff_alerts
from handlers.business_hours import BusinessHours
from handlers.routing import Router
from storage import conversations, customers, interactions, sla_breaches
from storage.db import Database
from storage.lookup import SessionLookup
from storage.models import Conversation
from storage.sla_breaches import TARGETS

log = logging.getLogger("kefu.sla")

BATCH = 200


@dataclass(frozen=True, slots=True)
class Breach:
    breach_id: int
    conversation_id: int
    target: str
    due_at: datetime
    priority: str
    team: str | None
    assignee: int | None


def pause(conversation: Conversation, now: datetime) -> None:
    """Pending on the customer with [sla] pause_while_pending: both clocks stop."""
    if conversation.sla_paused_at is None:
        conversation.sla_paused_at = now


def resumed(due: SlaDue, now: datetime, clock: BusinessHours) -> SlaDue:
    """The wait is over (the customer answered, or staff moved it on): each due time that was
    still ahead at the pause keeps the business time it had left, counted from `now`."""
    paused = due.paused_at
    if paused is None:
        return due

    def moved(at: datetime | None) -> datetime | None:
        if at is None or at <= paused:
            return at
        left = clock.between(paused, at)
        return clock.add(now, left) or now + left

    return replace(
        due,
        paused_at=None,
        first_response_due_at=moved(due.first_response_due_at),
        resolution_due_at=moved(due.resolution_due_at),
    )


def resume(conversation: Conversation, now: datetime, clock: BusinessHours) -> None:
    """resumed() on a conversation a job or staff command holds."""
    conversations.set_sla(conversation, resumed(conversations.sla_of(conversation), now, clock))


async def check(
    db: Database, now: datetime, router: Router, *, staff_room: StaffRoom | None = None
) -> list[Breach]:
    """Records and escalates every breach due at `now`; returns the new ones."""
    found: list[Breach] = []
    for target in TARGETS:
        while True:
            async with db.transaction() as session:
                batch = await sla_breaches.overdue(session, target, now, BATCH)
                for conversation in batch:
                    breach = await _breach(
                        session, conversation, target, now, router, staff_room
                    )
                    if breach is not None:
                        found.append(breach)
            if len(batch) < BATCH:
                break
    return found


async def _breach(
    session: AsyncSession,
    conversation: Conversation,
    target: str,
    now: datetime,
    router: Router,
    staff_room: StaffRoom | None,
) -> Breach | None:
    due_at = (
        conversation.first_response_due_at
        if target == "first_response"
        else conversation.resolution_due_at
    )
    assert due_at is not None
    breach_id = await sla_breaches.record(session, conversation, target, due_at, now)
    if breach_id is None:
        return None  # another process escalated it between our query and our insert
    team = router.team(conversation.team)
    reads = SessionLookup(session)
    leads = [m.name for m in await router.leads(reads, team)]
    assignee = await staff_alerts.staff_name(reads, conversation.assignee)
    late = now - due_at
    label = "first response" if target == "first_response" else "resolution"
    text = "\n".join(
        [
            f"⏰ SLA breach #{conversation.id}: {label} was due {due_at:%Y-%m-%d %H:%M} UTC "
            f"({_minutes(late)} late) · priority {conversation.priority}"
            + (" · complaint" if conversation.is_complaint else ""),
            f"team {team.name} · assignee: {'@' + assignee if assignee else 'nobody'}",
            "leads: "
            + (
                ", ".join("@" + n for n in leads)
                if leads
                else "none configured — see [routing.teams] leads"
            ),
        ]
    )
    meta = {
        "kind": "sla_breach",
        "target": target,
        "due_at": due_at.isoformat(),
        "priority": conversation.priority,
        "team": team.name,
        "assignee": conversation.assignee,
        "leads": leads,
        "breach": breach_id,
    }
    interactions.conversation_event(session, conversation, text, meta, now)
    customer = await customers.by_id(session, conversation.customer_id)
    await staff_alerts.post(
        session,
        staff_room,
        conversation,
        staff_alerts.name_of(customer)
        if customer is not None
        else f"customer {conversation.customer_id}",
        text,
        f"sla:{breach_id}",
        about="sla",
    )
    log.warning(
        "sla.breach conversation=%s target=%s due=%s priority=%s team=%s assignee=%s leads=%s",
        conversation.id,
        target,
        due_at.isoformat(),
        conversation.priority,
        team.name,
        assignee,
        ",".join(leads),
    )
    return Breach(
        breach_id,
        conversation.id,
        target,
        due_at,
        conversation.priority,
        team.name,
        conversation.assignee,
    )


def _minutes(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours < 48 else f"{hours // 24} d {hours % 24} h"
