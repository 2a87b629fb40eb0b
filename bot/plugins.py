"""The handlers kefu plugs into its pipeline, and the order its observers run in.

bot/pipeline.py names no particular handler: this module gives it the complaint classifier, the
router, the survey-answer check and the SLA clock, and `Observers` holds the observers the
builders in bot/app.py, bot/scheduler.py, bot/care.py and bot/insight.py register, each in its
`Phase` (bot/effects.py), so the order they run in does not depend on the order of the builders.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from bot.effects import Observer, Phase, SlaDue
from bot.pipeline import Classifier, Pipeline, Resume, Router
from handlers import complaints, routing, sla, survey
from storage.db import Database


def sla_resume(route: Router) -> Resume | None:
    """A pending conversation's SLA clock restarts on its team's business hours (a router that
    knows none, like a test's, keeps the due times as they are)."""
    clock = getattr(route, "clock", None)
    if clock is None:
        return None

    def resume(team: str | None, due: SlaDue, at: datetime) -> SlaDue:
        return sla.resumed(due, at, clock(team))

    return resume


def pipeline(
    db: Database,
    *,
    classify: Classifier = complaints.classify,
    route: Router = routing.route,
    observers: Sequence[Observer] = (),
    **options: Any,
) -> Pipeline:
    """A Pipeline with kefu's rules plugged in; `options` are Pipeline's own (on_commit, queue
    sizes)."""
    return Pipeline(
        db,
        classify=classify,
        route=route,
        explicit=complaints.explicit,
        answer=survey.as_answer,
        resume=sla_resume(route),
        observers=observers,
        **options,
    )


class Observers:
    """Observers by phase; within a phase, in the order they were added."""

    def __init__(self) -> None:
        self._added: list[tuple[Phase, int, Observer]] = []

    def add(self, phase: Phase, observer: Observer) -> None:
        self._added.append((phase, len(self._added), observer))

    def __iter__(self) -> Iterator[Observer]:
        return (observer for _, _, observer in sorted(self._added, key=lambda a: a[:2]))

    def ordered(self) -> list[Observer]:
        return list(self)
