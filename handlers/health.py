"""Customer health (流失预警): a churn-risk score from 0 to 100 per customer, with its reasons.

The signals are all in tables kefu already keeps: complaint conversations (unresolved, repeated,
high severity), survey scores, SLA breaches, the log (how often and how recently the customer
writes, an opt-out), identities (unreachable addresses). Each signal adds the points its
[insight.weights] entry gives, capped where a count could run away; the score is their sum, at
most 100. The reasons are the signals that fired, biggest first, with the facts behind them, so a
person can check each one against the customer's history.

One function computes the signals for a set of customers (`gather`): the full recompute calls it
a chunk of customers at a time, the pipeline observer for the one customer who just wrote.
Message rates are exponentially decayed counters (half-lives of 7 and 56 days): the observer
updates them in O(1) from the stored row; the full recompute rebuilds them from the log.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import ColumnElement, DateTime, and_, case, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import InsightConfig
from handlers import complaints
from storage.models import (
    OPEN_STATUSES,
    ComplaintReason,
    Conversation,
    Identity,
    Interaction,
    SlaBreach,
    Survey,
)

FAST_DAYS = 7.0  # half-life of the "recent" message rate
SLOW_DAYS = 56.0  # half-life of the "usual" message rate
RATE_HORIZON = timedelta(days=180)  # older messages weigh < 0.11 in the slow rate: not read
CAPS = {"open_complaint": 2, "repeat_complaint": 3, "sla_breach": 3}
LOW_CSAT = 2  # survey scores at or below this are a bad experience


def decay(value: float, since: datetime | None, now: datetime, half_life_days: float) -> float:
    if since is None or value == 0.0:
        return 0.0 if since is None else value
    days = max((now - since).total_seconds(), 0.0) / 86400.0
    return value * 0.5 ** (days / half_life_days)


def per_week(decayed: float, half_life_days: float) -> float:
    """A decayed count of a steady stream of r messages a day settles at r * h / ln 2."""
    return decayed * math.log(2) / half_life_days * 7.0


@dataclass
class Signals:
    """What the score is computed from, for one customer at one moment."""

    open_complaints: int = 0
    recent_complaints: int = 0
    high_severity_cues: list[str] = field(default_factory=list)
    high_severity: int = 0
    last_complaint_at: datetime | None = None
    worst_csat: int | None = None
    last_low_csat_at: datetime | None = None
    sla_breaches: int = 0
    identities: int = 0
    unreachable: int = 0
    opted_out: bool = False
    last_contact_at: datetime | None = None
    rate_fast: float = 0.0
    rate_slow: float = 0.0
    rate_at: datetime | None = None
    owner: int | None = None  # the assignee of their latest conversation
    conversation_id: int | None = None  # the conversation a lead should open


@dataclass(frozen=True, slots=True)
class Health:
    score: int
    band: str
    reasons: list[dict[str, Any]]


def score(s: Signals, cfg: InsightConfig, now: datetime) -> Health:
    w = cfg.weights
    found: list[dict[str, Any]] = []

    def add(code: str, points: float, **facts: Any) -> None:
        if points > 0:
            found.append({"code": code, "points": round(points), **facts})

    if s.open_complaints:
        n = min(s.open_complaints, CAPS["open_complaint"])
        add("open_complaints", w.open_complaint * n, n=s.open_complaints)
    if s.recent_complaints > 1:
        n = min(s.recent_complaints - 1, CAPS["repeat_complaint"])
        add("repeat_complaints", w.repeat_complaint * n, n=s.recent_complaints, days=cfg.window.days)
    if s.high_severity:
        add("high_severity", w.high_severity, cues=s.high_severity_cues[:3])
    if s.worst_csat is not None and s.worst_csat <= LOW_CSAT:
        add("low_csat", w.low_csat * (1.0 if s.worst_csat <= 1 else 0.5), score=s.worst_csat)
    if s.sla_breaches:
        add("sla_breaches", w.sla_breach * min(s.sla_breaches, CAPS["sla_breach"]), n=s.sla_breaches)
    if s.rate_at is not None:
        recent = per_week(decay(s.rate_fast, s.rate_at, now, FAST_DAYS), FAST_DAYS)
        usual = per_week(decay(s.rate_slow, s.rate_at, now, SLOW_DAYS), SLOW_DAYS)
        if recent >= cfg.rising_min and recent >= cfg.rising_factor * usual:
            add("rising_contact", w.rising_contact, recent=round(recent, 1), usual=round(usual, 1))
    bad_at = _latest(s.last_complaint_at, s.last_low_csat_at)
    if bad_at is not None and bad_at >= now - cfg.window and s.last_contact_at is not None:
        silent = now - max(s.last_contact_at, bad_at)
        if silent >= cfg.silence_after:
            add("silence_after_bad", w.silence_after_bad, days=silent.days)
    if s.unreachable:
        share = 1.0 if s.unreachable >= s.identities else 0.5
        add("unreachable", w.unreachable * share, n=s.unreachable, total=s.identities)
    if s.opted_out:
        add("opted_out", w.opted_out)
    found.sort(key=lambda r: -int(r["points"]))
    total = min(100, sum(int(r["points"]) for r in found))
    band = "at_risk" if total >= cfg.threshold else "watch" if total >= cfg.watch else "ok"
    return Health(total, band, found)


def _latest(*values: datetime | None) -> datetime | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


# --- reasons, in the staff's language --------------------------------------------------------

_TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "open_complaints": "{n} unresolved complaint(s)",
        "repeat_complaints": "{n} complaints in the last {days} days",
        "high_severity": "high-severity complaint: {cues}",
        "low_csat": "satisfaction score {score}/5",
        "sla_breaches": "{n} SLA breach(es) on their conversations",
        "rising_contact": "writing more often: {recent} messages a week, usually {usual}",
        "silence_after_bad": "silent for {days} days after a bad experience",
        "unreachable": "{n} of {total} address(es) unreachable",
        "opted_out": "withdrew consent (opted out)",
    },
    "zh": {
        "open_complaints": "{n} 个未解决的投诉",
        "repeat_complaints": "近 {days} 天投诉 {n} 次",
        "high_severity": "高风险投诉：{cues}",
        "low_csat": "满意度评分 {score}/5",
        "sla_breaches": "{n} 次超出服务时限（SLA）",
        "rising_contact": "联系频率上升：每周 {recent} 条，平时 {usual} 条",
        "silence_after_bad": "不满后已沉默 {days} 天",
        "unreachable": "{n}/{total} 个联系方式无法送达",
        "opted_out": "已退订",
    },
}


def explain(reason: dict[str, Any], language: str) -> str:
    texts = _TEXTS.get(language, _TEXTS["en"])
    template = texts.get(str(reason.get("code")))
    if template is None:
        return str(reason.get("code"))
    facts = dict(reason)
    cues = facts.get("cues") or []
    facts["cues"] = ("、" if language == "zh" else ", ").join(str(c) for c in cues) or "—"
    try:
        return template.format(**facts)
    except (KeyError, IndexError, ValueError):
        return str(reason.get("code"))


def explain_all(reasons: Iterable[dict[str, Any]], language: str, limit: int | None = None) -> list[str]:
    chosen = list(reasons)[:limit] if limit is not None else list(reasons)
    return [f"{explain(r, language)} (+{r.get('points', 0)})" for r in chosen]


# --- gathering the signals -------------------------------------------------------------------


def _counted(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.sum(case((condition, 1), else_=0))


async def gather(
    session: AsyncSession,
    ids: Sequence[int],
    now: datetime,
    cfg: InsightConfig,
    *,
    from_log: bool,
) -> dict[int, Signals]:
    """Signals of `ids` from the tables. from_log: also the last contact, the message rates and the
    opt-out, read from the log (the full recompute); without it the caller keeps those itself."""
    found: dict[int, Signals] = {i: Signals() for i in ids}
    if not ids:
        return found
    since = now - cfg.window
    complaint = Conversation.is_complaint.is_(True)
    # A complaint counts while the customer spoke in it within the window (a reopened one too).
    recent = and_(complaint, Conversation.updated_at >= since)
    rows = await session.execute(
        select(
            Conversation.customer_id,
            _counted(and_(complaint, Conversation.status.in_(OPEN_STATUSES))),
            _counted(recent),
            _counted(and_(recent, Conversation.severity == "high")),
            func.max(case((complaint, Conversation.updated_at), else_=None)),
            func.max(Conversation.id),
        )
        .where(Conversation.customer_id.in_(ids))
        .group_by(Conversation.customer_id)
    )
    latest_conversation: dict[int, int] = {}
    severe: list[int] = []
    for cid, open_n, recent_n, high_n, last_complaint, last_id in rows:
        s = found[cid]
        s.open_complaints, s.recent_complaints, s.high_severity = int(open_n or 0), int(recent_n or 0), int(high_n or 0)
        s.last_complaint_at = last_complaint if isinstance(last_complaint, datetime) else _parse(last_complaint)
        latest_conversation[cid] = int(last_id)
        if s.high_severity:
            severe.append(cid)
    if latest_conversation:
        # The conversation to open: their latest open complaint, else their latest conversation.
        best = await session.execute(
            select(Conversation.customer_id, Conversation.id, Conversation.assignee, Conversation.status,
                   Conversation.is_complaint)
            .where(Conversation.id.in_(list(latest_conversation.values())))
        )
        for cid, conv_id, assignee, _status, _complaint in best:
            found[cid].conversation_id, found[cid].owner = int(conv_id), assignee
        open_complaints = await session.execute(
            select(Conversation.customer_id, func.max(Conversation.id))
            .where(Conversation.customer_id.in_(ids), complaint, Conversation.status.in_(OPEN_STATUSES))
            .group_by(Conversation.customer_id)
        )
        chosen = {cid: int(conv) for cid, conv in open_complaints}
        if chosen:
            owners = await session.execute(
                select(Conversation.customer_id, Conversation.id, Conversation.assignee)
                .where(Conversation.id.in_(list(chosen.values())))
            )
            for cid, conv_id, assignee in owners:
                found[cid].conversation_id, found[cid].owner = int(conv_id), assignee
    if severe:
        cues = await session.execute(
            select(Conversation.customer_id, ComplaintReason.reason)
            .select_from(ComplaintReason)
            .join(Conversation, Conversation.id == ComplaintReason.conversation_id)
            .where(Conversation.customer_id.in_(severe), Conversation.severity == "high",
                   Conversation.updated_at >= since)
            .order_by(ComplaintReason.id)
        )
        other: dict[int, list[str]] = {}
        for cid, reason in cues:
            listed = found[cid].high_severity_cues if _severe_cue(reason) else other.setdefault(cid, [])
            if reason not in listed:
                listed.append(reason)
        for cid, reasons in other.items():
            if not found[cid].high_severity_cues:  # severe by a cue of the team's own (extra_cues)
                found[cid].high_severity_cues = reasons
    surveys = await session.execute(
        select(
            Survey.customer_id,
            func.min(Survey.score),
            func.max(case((Survey.score <= LOW_CSAT, Survey.answered_at), else_=None)),
        )
        .where(Survey.customer_id.in_(ids), Survey.score.is_not(None), Survey.answered_at >= since)
        .group_by(Survey.customer_id)
    )
    for cid, worst, low_at in surveys:
        found[cid].worst_csat = int(worst) if worst is not None else None
        found[cid].last_low_csat_at = low_at if isinstance(low_at, datetime) else _parse(low_at)
    breaches = await session.execute(
        select(Conversation.customer_id, func.count())
        .select_from(SlaBreach)
        .join(Conversation, Conversation.id == SlaBreach.conversation_id)
        .where(Conversation.customer_id.in_(ids), SlaBreach.breached_at >= since)
        .group_by(Conversation.customer_id)
    )
    for cid, n in breaches:
        found[cid].sla_breaches = int(n)
    addresses = await session.execute(
        select(Identity.customer_id, func.count(), _counted(Identity.reachable.is_(False)))
        .where(Identity.customer_id.in_(ids), Identity.channel != "phone")
        .group_by(Identity.customer_id)
    )
    for cid, total, unreachable in addresses:
        found[cid].identities, found[cid].unreachable = int(total), int(unreachable or 0)
    if from_log:
        await _from_log(session, ids, now, found)
    return found


@functools.cache
def _severe_reasons() -> frozenset[str]:
    """The reasons of the built-in high-severity cues (12315, chargeback, lawyer, media, safety,
    lost money): the reasons worth naming when a complaint was severe."""
    found: set[str] = set()
    for path in complaints.BUILTIN_CUES:
        found.update(c.reason for c in complaints.load_cue_file(path) if c.severity == "high")
    return frozenset(found)


def _severe_cue(reason: str) -> bool:
    return reason in _severe_reasons()


def _age_days(session: AsyncSession, now: datetime) -> ColumnElement[float]:
    if session.bind.dialect.name == "sqlite":
        return func.julianday(now.replace(tzinfo=None).isoformat(sep=" ")) - func.julianday(Interaction.created_at)
    naive = now.astimezone(timezone.utc).replace(tzinfo=None)
    return func.extract("epoch", literal(naive, DateTime()) - Interaction.created_at) / 86400.0


async def _from_log(session: AsyncSession, ids: Sequence[int], now: datetime, found: dict[int, Signals]) -> None:
    """One pass over each customer's log rows, aggregated by the database."""
    inbound = Interaction.direction == "in"
    # Rows dated after `now` (a recompute for a past moment) are not part of its picture.
    recent = and_(inbound, Interaction.created_at >= now - RATE_HORIZON, Interaction.created_at <= now)
    age = _age_days(session, now)
    withdrawn = and_(
        Interaction.direction == "event",
        Interaction.meta["kind"].as_string() == "consent_withdrawn",
    )
    rows = await session.execute(
        select(
            Interaction.customer_id,
            func.max(case((and_(inbound, Interaction.created_at <= now), Interaction.created_at), else_=None)),
            func.sum(case((recent, func.power(0.5, age / FAST_DAYS)), else_=0.0)),
            func.sum(case((recent, func.power(0.5, age / SLOW_DAYS)), else_=0.0)),
            func.max(case((withdrawn, 1), else_=0)),
        )
        .where(Interaction.customer_id.in_(ids))
        .group_by(Interaction.customer_id)
    )
    for cid, last, fast, slow, opted in rows:
        s = found[cid]
        s.last_contact_at = _parse(last)
        s.rate_fast, s.rate_slow = float(fast or 0.0), float(slow or 0.0)
        s.opted_out = bool(opted)
    for s in found.values():
        s.rate_at = now


def _parse(value: object) -> datetime | None:
    """Aggregates (max of a column) come back as text on SQLite, without the column's type."""
    if value is None or isinstance(value, datetime):
        return value
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
