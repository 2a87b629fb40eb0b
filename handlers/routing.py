"""Routing: priority, assignee, staff notification. Teams and rules in config are issue #5."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from bot.messages import Inbound
from handlers.complaints import Verdict
from storage.models import Conversation, Customer


@dataclass(frozen=True, slots=True)
class Decision:
    priority: str = "normal"  # low | normal | high | urgent
    assignee_id: int | None = None
    notify_staff: bool = False


async def route(
    session: AsyncSession,
    verdict: Verdict,
    customer: Customer,
    conversation: Conversation | None,
    inbound: Inbound,
) -> Decision:
    if verdict.is_complaint:
        return Decision(priority="urgent" if verdict.severity == "high" else "high")
    return Decision(priority="high" if customer.vip else "normal")
