"""Routing: priority, assignee, staff notification. Teams and rules in config are issue #5."""

from __future__ import annotations

from dataclasses import dataclass

from bot.messages import Inbound
from handlers.complaints import Verdict
from storage.models import Customer


@dataclass(frozen=True, slots=True)
class Decision:
    priority: str = "normal"  # low | normal | high | urgent
    assignee_id: int | None = None
    notify_staff: bool = False


def route(verdict: Verdict, customer: Customer, inbound: Inbound) -> Decision:
    if verdict.is_complaint:
        return Decision(priority="urgent" if verdict.severity == "high" else "high")
    return Decision(priority="high" if customer.vip else "normal")
