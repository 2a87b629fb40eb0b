"""Routing: priority, assignee, staff notification. Teams and rules in config are issue #5."""

from __future__ import annotations

from dataclasses import dataclass

from handlers.complaints import Verdict


@dataclass(frozen=True, slots=True)
class Decision:
    priority: str = "normal"  # low | normal | high | urgent
    assignee_id: int | None = None
    notify_staff: bool = False


def route(verdict: Verdict) -> Decision:
    return Decision(priority="high" if verdict.is_complaint else "normal")
