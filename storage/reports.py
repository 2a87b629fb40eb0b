"""`kefu report`: complaints, response times, CSAT and SLA breaches, computed by the database.

Every figure is an SQL aggregate; percentiles come from window functions (nearest rank: the median
of 4 values is the 2nd, the p90 of 10 values the 9th), so a report over a year of conversations
reads a few rows per figure, not every conversation. SQLite and PostgreSQL differ only in how a
duration and a week are written (see seconds_between and week_start).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, case, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage import dialect
from storage.models import ComplaintReason, Conversation, SlaBreach, Staff, Survey, utcnow


def seconds_between(session: AsyncSession, end: Any, start: Any) -> ColumnElement[Any]:
    if dialect.is_sqlite(session):
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return func.extract("epoch", end - start)


def week_start(session: AsyncSession, when: Any) -> ColumnElement[str]:
    """The Monday that starts the (UTC) week of `when`, as YYYY-MM-DD."""
    if dialect.is_sqlite(session):
        # Back six days, then forward to the next Monday (the same day if it is one).
        return func.date(when, "-6 days", "weekday 1")
    return func.to_char(func.date_trunc("week", when), "YYYY-MM-DD")


@dataclass(frozen=True, slots=True)
class Spread:
    count: int = 0
    median_seconds: float | None = None
    p90_seconds: float | None = None


async def spreads(
    session: AsyncSession,
    value: ColumnElement[float],
    where: Sequence[ColumnElement[bool]],
    group: Any = None,
) -> dict[Any, Spread]:
    """Count, median and p90 of `value` per `group` (one group, None, without it)."""
    partition = [group] if group is not None else []
    key = group if group is not None else literal(None)
    ranked = (
        select(
            key.label("g"),
            value.label("v"),
            func.row_number().over(partition_by=partition, order_by=value).label("rn"),
            func.count().over(partition_by=partition).label("n"),
        )
        .where(*where)
        .subquery()
    )
    # ceil(n/2) and ceil(9n/10) by floor division ("//": SQLAlchemy 2 makes "/" true division).
    median_rank = (ranked.c.n + 1) // 2
    p90_rank = (ranked.c.n * 9 + 9) // 10
    rows = await session.execute(
        select(ranked.c.g, ranked.c.n, ranked.c.rn, ranked.c.v, median_rank, p90_rank).where(
            or_(ranked.c.rn == median_rank, ranked.c.rn == p90_rank)
        )
    )
    found: dict[Any, dict[str, Any]] = {}
    for g, n, rn, v, m_rank, p_rank in rows:
        entry = found.setdefault(g, {"count": int(n)})
        if rn == m_rank:
            entry["median_seconds"] = round(float(v), 1)
        if rn == p_rank:
            entry["p90_seconds"] = round(float(v), 1)
    return {g: Spread(**entry) for g, entry in found.items()}


@dataclass
class Report:
    generated_at: datetime
    since: datetime | None
    complaints: dict[str, Any] = field(default_factory=dict)
    response_times: dict[str, Any] = field(default_factory=dict)
    csat: dict[str, Any] = field(default_factory=dict)
    sla: dict[str, Any] = field(default_factory=dict)
    agents: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "generated_at": self.generated_at.isoformat(),
            "since": self.since.isoformat() if self.since else None,
            "complaints": self.complaints,
            "response_times": self.response_times,
            "csat": self.csat,
            "sla": self.sla,
            "agents": self.agents,
        }


def _spread_json(spread: Spread | None) -> dict[str, Any]:
    spread = spread or Spread()
    return {
        "count": spread.count,
        "median_seconds": spread.median_seconds,
        "p90_seconds": spread.p90_seconds,
    }


class Builder:
    """One report, section by section: the CLI advances its progress bar after each step."""

    def __init__(
        self, session: AsyncSession, since: datetime | None, now: datetime | None = None
    ) -> None:
        self.session = session
        self.since = since
        self.report = Report(now or utcnow(), since)

    def steps(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        return [
            ("complaints", self.complaints),
            ("response times", self.response_times),
            ("satisfaction", self.csat),
            ("SLA breaches", self.sla),
            ("agents", self.agents),
        ]

    def _created(self) -> list[ColumnElement[bool]]:
        return [Conversation.created_at >= self.since] if self.since else []

    async def complaints(self) -> None:
        s = self.session
        where = [Conversation.is_complaint.is_(True), *self._created()]
        total = await s.scalar(select(func.count()).select_from(Conversation).where(*where)) or 0
        week = week_start(s, Conversation.created_at)
        by_week = await s.execute(
            select(week, func.count()).where(*where).group_by(week).order_by(week)
        )
        severity = func.coalesce(Conversation.severity, "normal")
        by_severity = await s.execute(
            select(severity, func.count()).where(*where).group_by(severity)
        )
        by_cue = await s.execute(
            select(
                ComplaintReason.reason, func.count(func.distinct(ComplaintReason.conversation_id))
            )
            .join(Conversation, Conversation.id == ComplaintReason.conversation_id)
            .where(*where)
            .group_by(ComplaintReason.reason)
            .order_by(
                func.count(func.distinct(ComplaintReason.conversation_id)).desc(),
                ComplaintReason.reason,
            )
        )
        self.report.complaints = {
            "total": int(total),
            "by_week": [{"week": str(w), "count": int(n)} for w, n in by_week],
            "by_severity": {str(k): int(n) for k, n in by_severity},
            "by_cue": [{"reason": r, "count": int(n)} for r, n in by_cue],
        }

    async def response_times(self) -> None:
        s = self.session
        first = seconds_between(s, Conversation.first_response_at, Conversation.created_at)
        resolution = seconds_between(s, Conversation.resolved_at, Conversation.created_at)
        answered = [Conversation.first_response_at.is_not(None), *self._created()]
        resolved = [Conversation.resolved_at.is_not(None), *self._created()]
        complaint = Conversation.is_complaint.is_(True)
        self.report.response_times = {
            "first_response": _spread_json((await spreads(s, first, answered)).get(None)),
            "resolution": _spread_json((await spreads(s, resolution, resolved)).get(None)),
            "complaints": {
                "first_response": _spread_json(
                    (await spreads(s, first, [*answered, complaint])).get(None)
                ),
                "resolution": _spread_json(
                    (await spreads(s, resolution, [*resolved, complaint])).get(None)
                ),
            },
        }

    async def csat(self) -> None:
        s = self.session
        where = [Survey.asked_at >= self.since] if self.since else []
        asked, answered, average = (
            await s.execute(
                select(func.count(), func.count(Survey.score), func.avg(Survey.score)).where(*where)
            )
        ).one()
        distribution = dict.fromkeys(range(1, 6), 0)
        rows = await s.execute(
            select(Survey.score, func.count())
            .where(Survey.score.is_not(None), *where)
            .group_by(Survey.score)
        )
        for score, n in rows:
            if score is not None:  # always so (score IS NOT NULL); for the type checker
                distribution[int(score)] = int(n)
        self.report.csat = {
            "asked": int(asked),
            "answered": int(answered),
            "response_rate": round(answered / asked, 3) if asked else None,
            "average": round(float(average), 2) if average is not None else None,
            "distribution": {str(k): v for k, v in distribution.items()},
        }

    async def sla(self) -> None:
        s = self.session
        where = [SlaBreach.breached_at >= self.since] if self.since else []
        total = await s.scalar(select(func.count()).select_from(SlaBreach).where(*where)) or 0
        by_target = await s.execute(
            select(SlaBreach.target, func.count()).where(*where).group_by(SlaBreach.target)
        )
        by_priority = await s.execute(
            select(SlaBreach.priority, func.count()).where(*where).group_by(SlaBreach.priority)
        )
        team = func.coalesce(SlaBreach.team, "—")
        by_team = await s.execute(select(team, func.count()).where(*where).group_by(team))
        self.report.sla = {
            "breaches": int(total),
            "by_target": {t: int(n) for t, n in by_target},
            "by_priority": {p: int(n) for p, n in by_priority},
            "by_team": {t: int(n) for t, n in by_team},
        }

    async def agents(self) -> None:
        s = self.session
        created = self._created()
        done = case((Conversation.resolved_at.is_not(None), 1), else_=0)
        rows = await s.execute(
            select(
                Conversation.assignee,
                func.count(),
                func.sum(done),
                func.sum(case((Conversation.is_complaint.is_(True), 1), else_=0)),
            )
            .where(Conversation.assignee.is_not(None), *created)
            .group_by(Conversation.assignee)
        )
        per: dict[int, dict[str, Any]] = {}
        for staff_id, assigned, resolved, complaints in rows:
            per[staff_id] = {
                "assigned": int(assigned),
                "resolved": int(resolved or 0),
                "complaints": int(complaints or 0),
            }
        first = seconds_between(s, Conversation.first_response_at, Conversation.created_at)
        times = await spreads(
            s,
            first,
            [
                Conversation.first_response_at.is_not(None),
                Conversation.assignee.is_not(None),
                *created,
            ],
            Conversation.assignee,
        )
        survey_where: list[ColumnElement[bool]] = [
            Survey.assignee.is_not(None),
            Survey.score.is_not(None),
        ]
        if self.since:
            survey_where.append(Survey.asked_at >= self.since)
        scores = await s.execute(
            select(Survey.assignee, func.count(), func.avg(Survey.score))
            .where(*survey_where)
            .group_by(Survey.assignee)
        )
        csat = {a: (int(n), float(avg)) for a, n, avg in scores if a is not None}
        breach_where: list[ColumnElement[bool]] = [SlaBreach.assignee.is_not(None)]
        if self.since:
            breach_where.append(SlaBreach.breached_at >= self.since)
        breach_rows = await s.execute(
            select(SlaBreach.assignee, func.count())
            .where(*breach_where)
            .group_by(SlaBreach.assignee)
        )
        breaches = {a: int(n) for a, n in breach_rows if a is not None}
        ids = set(per) | set(csat) | set(breaches)
        names = (
            {
                i: n
                for i, n in await s.execute(select(Staff.id, Staff.name).where(Staff.id.in_(ids)))
            }
            if ids
            else {}
        )
        agents = []
        for staff_id in sorted(ids, key=lambda i: names.get(i, "")):
            entry = per.get(staff_id, {"assigned": 0, "resolved": 0, "complaints": 0})
            spread = times.get(staff_id)
            n, avg = csat.get(staff_id, (0, None))
            agents.append(
                {
                    "staff_id": staff_id,
                    "name": names.get(staff_id, f"staff {staff_id}"),
                    **entry,
                    "first_response_median_seconds": spread.median_seconds if spread else None,
                    "csat_answers": n,
                    "csat_average": round(avg, 2) if avg is not None else None,
                    "sla_breaches": breaches.get(staff_id, 0),
                }
            )
        self.report.agents = agents


async def build(
    session: AsyncSession, since: datetime | None = None, *, now: datetime | None = None
) -> Report:
    builder = Builder(session, since, now)
    for _, step in builder.steps():
        await step()
    return builder.report
