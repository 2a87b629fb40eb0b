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
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    DateTime,
    and_,
    bindparam,
    case,
    func,
    select,
    true,
)
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import InsightConfig
from handlers import complaints
from storage.models import (
    OPEN_STATUSES,
    ComplaintReason,
    Conversation,
    CustomerHealth,
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
    return float(value * 0.5 ** (days / half_life_days))


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


NOTHING = Health(0, "ok", [])


def score(s: Signals, cfg: InsightConfig, now: datetime) -> Health:
    if not (
        s.open_complaints
        or s.recent_complaints > 1
        or s.high_severity
        or s.sla_breaches
        or s.unreachable
        or s.opted_out
        or s.rate_fast >= cfg.rising_min
        or s.last_complaint_at
        or s.last_low_csat_at
        or (s.worst_csat is not None and s.worst_csat <= LOW_CSAT)
    ):
        # Nothing against them (most customers): no reason to weigh. A decayed fast rate below
        # rising_min cannot reach rising_min messages a week (it only shrinks with time).
        return NOTHING if cfg.watch > 0 else Health(0, "watch", [])
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
        add(
            "repeat_complaints", w.repeat_complaint * n, n=s.recent_complaints, days=cfg.window.days
        )
    if s.high_severity:
        add("high_severity", w.high_severity, cues=s.high_severity_cues[:3])
    if s.worst_csat is not None and s.worst_csat <= LOW_CSAT:
        add("low_csat", w.low_csat * (1.0 if s.worst_csat <= 1 else 0.5), score=s.worst_csat)
    if s.sla_breaches:
        add(
            "sla_breaches", w.sla_breach * min(s.sla_breaches, CAPS["sla_breach"]), n=s.sla_breaches
        )
    rising = _rising(s.rate_fast, s.rate_slow, s.rate_at, now, cfg)
    if rising is not None:
        found.append(rising)
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


def _rising(
    fast: float, slow: float, rate_at: datetime | None, now: datetime, cfg: InsightConfig
) -> dict[str, Any] | None:
    if rate_at is None or cfg.weights.rising_contact <= 0:
        return None
    recent = per_week(decay(fast, rate_at, now, FAST_DAYS), FAST_DAYS)
    usual = per_week(decay(slow, rate_at, now, SLOW_DAYS), SLOW_DAYS)
    if recent >= cfg.rising_min and recent >= cfg.rising_factor * usual:
        points = round(cfg.weights.rising_contact)
        return {
            "code": "rising_contact",
            "points": points,
            "recent": round(recent, 1),
            "usual": round(usual, 1),
        }
    return None


# The reasons that depend only on when the customer writes.
WRITING = ("rising_contact", "silence_after_bad")


def after_message(
    reasons: list[dict[str, Any]], fast: float, slow: float, now: datetime, cfg: InsightConfig
) -> Health:
    """The customer just wrote a plain message (no complaint, not in a complaint conversation, not
    an opt-out): every stored reason still holds except those about when they write. Their silence
    is over and their message rate is new; the rest is the last full scoring's."""
    found = [r for r in reasons if r.get("code") not in WRITING]
    rising = _rising(fast, slow, now, now, cfg)
    if rising is not None:
        found.append(rising)
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


def explain_all(
    reasons: Iterable[dict[str, Any]], language: str, limit: int | None = None
) -> list[str]:
    chosen = list(reasons)[:limit] if limit is not None else list(reasons)
    return [f"{explain(r, language)} (+{r.get('points', 0)})" for r in chosen]


# --- gathering the signals -------------------------------------------------------------------
#
# Every statement selects a range of customer ids (lo..hi): the full recompute passes a chunk of
# consecutive ids, the observer one id as lo = hi. The statements are built once per dialect with
# bound parameters and run on the Core connection: building a statement, expanding an IN list of
# thousands of ids and loading rows through the ORM cost more than the queries themselves.


def _counted(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.sum(case((condition, 1), else_=0))


_LO: BindParameter[int] = bindparam("lo")
_HI: BindParameter[int] = bindparam("hi")
_SINCE = bindparam("since", type_=DateTime())


def _in_range(column: Any) -> ColumnElement[bool]:
    between: ColumnElement[bool] = column.between(_LO, _HI)
    return between


@functools.cache
def _statements(dialect: str) -> dict[str, Any]:
    complaint = Conversation.is_complaint.is_(True)
    # A complaint counts while the customer spoke in it within the window (a reopened one too).
    recent = and_(complaint, Conversation.updated_at >= _SINCE)
    opened = and_(complaint, Conversation.status.in_(OPEN_STATUSES))
    conversations = (
        select(
            Conversation.customer_id,
            _counted(opened),
            _counted(recent),
            _counted(and_(recent, Conversation.severity == "high")),
            func.max(case((complaint, Conversation.updated_at), else_=None)),
            func.max(Conversation.id),
            func.max(case((opened, Conversation.id), else_=None)),
        )
        .where(_in_range(Conversation.customer_id))
        .group_by(Conversation.customer_id)
    )
    owners = select(Conversation.id, Conversation.assignee).where(
        Conversation.id.in_(bindparam("ids", expanding=True))
    )
    cues = (
        select(Conversation.customer_id, ComplaintReason.reason)
        .select_from(ComplaintReason)
        .join(Conversation, Conversation.id == ComplaintReason.conversation_id)
        .where(
            Conversation.customer_id.in_(bindparam("ids", expanding=True)),
            Conversation.severity == "high",
            Conversation.updated_at >= _SINCE,
        )
        .order_by(ComplaintReason.id)
    )
    surveys = (
        select(
            Survey.customer_id,
            func.min(Survey.score),
            func.max(case((Survey.score <= LOW_CSAT, Survey.answered_at), else_=None)),
        )
        .where(
            _in_range(Survey.customer_id), Survey.score.is_not(None), Survey.answered_at >= _SINCE
        )
        .group_by(Survey.customer_id)
    )
    breaches = (
        select(Conversation.customer_id, func.count())
        .select_from(SlaBreach)
        .join(Conversation, Conversation.id == SlaBreach.conversation_id)
        .where(_in_range(Conversation.customer_id), SlaBreach.breached_at >= _SINCE)
        .group_by(Conversation.customer_id)
    )
    addresses = (
        select(Identity.customer_id, func.count(), _counted(Identity.reachable.is_(False)))
        .where(_in_range(Identity.customer_id), Identity.channel != "phone")
        .group_by(Identity.customer_id)
    )
    now = bindparam("now", type_=DateTime())
    if dialect == "sqlite":
        age = func.julianday(bindparam("now_text")) - func.julianday(Interaction.created_at)
    else:
        age = func.extract("epoch", now - Interaction.created_at) / 86400.0
    inbound = Interaction.direction == "in"
    # Rows dated after `now` (a recompute for a past moment) are not part of its picture.
    seen = and_(inbound, Interaction.created_at <= now)
    rated = and_(seen, Interaction.created_at >= bindparam("horizon", type_=DateTime()))
    withdrawn = and_(
        Interaction.direction == "event",
        Interaction.meta["kind"].as_string() == "consent_withdrawn",
    )
    log = (
        select(
            Interaction.customer_id,
            func.max(case((seen, Interaction.created_at), else_=None)),
            func.sum(case((rated, func.power(0.5, age / FAST_DAYS)), else_=0.0)),
            func.sum(case((rated, func.power(0.5, age / SLOW_DAYS)), else_=0.0)),
            func.max(case((withdrawn, 1), else_=0)),
        )
        .where(_in_range(Interaction.customer_id))
        .group_by(Interaction.customer_id)
    )
    return {
        "conversations": conversations,
        "owners": owners,
        "cues": cues,
        "surveys": surveys,
        "breaches": breaches,
        "addresses": addresses,
        "log": log,
    }


def _naive(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(tzinfo=None)


async def gather(
    session: AsyncSession,
    lo: int,
    hi: int,
    now: datetime,
    cfg: InsightConfig,
    *,
    from_log: bool,
    owners: bool = True,
) -> dict[int, Signals]:
    """Signals of the customers with ids lo..hi that have any rows (a customer with none has
    nothing against them: Signals()). from_log: also the last contact, the message rates and the
    opt-out, read from the log (the full recompute); without it the caller keeps those itself.
    owners: also the conversation to open and its assignee (what a warning names)."""
    found: dict[int, Signals] = {}
    conn = await session.connection()
    st = _statements(conn.dialect.name)
    params: dict[str, Any] = {"lo": lo, "hi": hi, "since": _naive(now - cfg.window)}

    def of(cid: int) -> Signals:
        s = found.get(cid)
        if s is None:
            s = found[cid] = Signals()
        return s

    latest: dict[int, int] = {}
    severe: list[int] = []
    for cid, open_n, recent_n, high_n, last_complaint, last_id, open_id in (
        await conn.execute(st["conversations"], params)
    ).all():
        s = of(cid)
        s.open_complaints, s.recent_complaints, s.high_severity = (
            int(open_n or 0),
            int(recent_n or 0),
            int(high_n or 0),
        )
        s.last_complaint_at = _parse(last_complaint)
        # The conversation to open: their latest open complaint, else their latest conversation.
        s.conversation_id = int(open_id) if open_id is not None else int(last_id)
        latest[cid] = s.conversation_id
        if s.high_severity:
            severe.append(cid)
    if owners and latest:
        assignees = {
            conv: assignee
            for conv, assignee in await conn.execute(st["owners"], {"ids": list(latest.values())})
        }
        for cid, conv in latest.items():
            found[cid].owner = assignees.get(conv)
    if severe:
        other: dict[int, list[str]] = {}
        for cid, reason in await conn.execute(
            st["cues"], {"ids": severe, "since": params["since"]}
        ):
            listed = (
                found[cid].high_severity_cues if _severe_cue(reason) else other.setdefault(cid, [])
            )
            if reason not in listed:
                listed.append(reason)
        for cid, reasons in other.items():
            if not found[cid].high_severity_cues:  # severe by a cue of the team's own (extra_cues)
                found[cid].high_severity_cues = reasons
    for cid, worst, low_at in (await conn.execute(st["surveys"], params)).all():
        s = of(cid)
        s.worst_csat = int(worst) if worst is not None else None
        s.last_low_csat_at = _parse(low_at)
    for cid, n in (await conn.execute(st["breaches"], params)).all():
        of(cid).sla_breaches = int(n)
    for cid, total, unreachable in (await conn.execute(st["addresses"], params)).all():
        s = of(cid)
        s.identities, s.unreachable = int(total), int(unreachable or 0)
    if from_log:
        log_params = {
            "lo": lo,
            "hi": hi,
            "now": _naive(now),
            "now_text": _naive(now).isoformat(sep=" "),
            "horizon": _naive(now - RATE_HORIZON),
        }
        for cid, last, fast, slow, opted in (await conn.execute(st["log"], log_params)).all():
            s = of(cid)
            s.last_contact_at = _parse(last)
            s.rate_fast, s.rate_slow = float(fast or 0.0), float(slow or 0.0)
            s.opted_out = bool(opted)
            s.rate_at = now
    return found


@dataclass(frozen=True, slots=True)
class Stored:
    """What customer_health holds for one customer, as the observer needs it."""

    rate_fast: float
    rate_slow: float
    rate_at: datetime | None
    last_contact_at: datetime | None
    opted_out: bool
    alerted_at: datetime | None
    crossings: int


_STORED_ROWS = select(
    CustomerHealth.customer_id,
    CustomerHealth.reasons,
    CustomerHealth.rate_fast,
    CustomerHealth.rate_slow,
    CustomerHealth.rate_at,
    CustomerHealth.last_contact_at,
    CustomerHealth.opted_out,
    CustomerHealth.alerted_at,
    CustomerHealth.crossings,
).where(CustomerHealth.customer_id.in_(bindparam("ids", expanding=True)))


async def stored_rows(
    session: AsyncSession, customer_ids: list[int]
) -> dict[int, tuple[list[dict[str, Any]], Stored]]:
    """The stored rows of several customers in one statement (a pipeline batch's)."""
    conn = await session.connection()
    return {
        int(r.customer_id): (
            list(r.reasons or []),
            Stored(
                float(r.rate_fast or 0.0),
                float(r.rate_slow or 0.0),
                _parse(r.rate_at),
                _parse(r.last_contact_at),
                bool(r.opted_out),
                _parse(r.alerted_at),
                int(r.crossings or 0),
            ),
        )
        for r in await conn.execute(_STORED_ROWS, {"ids": customer_ids})
    }


@functools.cache
def _one_statement(dialect: str) -> Any:
    """One customer's signals and stored row in one round trip: the observer's path (a message
    should cost as few statements as possible). Each derived table is an aggregate over that
    customer's rows by an index, so it is one row even when the customer has none."""
    cid: BindParameter[int] = bindparam("cid")
    complaint = Conversation.is_complaint.is_(True)
    recent = and_(complaint, Conversation.updated_at >= _SINCE)
    conversations = (
        select(
            _counted(and_(complaint, Conversation.status.in_(OPEN_STATUSES))).label("open_n"),
            _counted(recent).label("recent_n"),
            _counted(and_(recent, Conversation.severity == "high")).label("high_n"),
            func.max(case((complaint, Conversation.updated_at), else_=None)).label(
                "last_complaint"
            ),
        )
        .where(Conversation.customer_id == cid)
        .subquery()
    )
    surveys = (
        select(
            func.min(Survey.score).label("worst"),
            func.max(case((Survey.score <= LOW_CSAT, Survey.answered_at), else_=None)).label(
                "low_at"
            ),
        )
        .where(Survey.customer_id == cid, Survey.score.is_not(None), Survey.answered_at >= _SINCE)
        .subquery()
    )
    breaches = (
        select(func.count().label("breaches"))
        .select_from(SlaBreach)
        .join(Conversation, Conversation.id == SlaBreach.conversation_id)
        .where(Conversation.customer_id == cid, SlaBreach.breached_at >= _SINCE)
        .subquery()
    )
    addresses = (
        select(
            func.count().label("addresses"),
            _counted(Identity.reachable.is_(False)).label("unreachable"),
        )
        .where(Identity.customer_id == cid, Identity.channel != "phone")
        .subquery()
    )
    row = CustomerHealth
    stored = (
        select(
            func.count().label("stored"),
            func.max(row.rate_fast).label("rate_fast"),
            func.max(row.rate_slow).label("rate_slow"),
            func.max(row.rate_at).label("rate_at"),
            func.max(row.last_contact_at).label("last_contact_at"),
            func.max(case((row.opted_out.is_(True), 1), else_=0)).label("opted_out"),
            func.max(row.alerted_at).label("alerted_at"),
            func.max(row.crossings).label("crossings"),
        )
        .where(row.customer_id == cid)
        .subquery()
    )
    # One-row tables joined on true: the cross product is one row, on purpose.
    everything = (
        conversations.join(surveys, true())
        .join(breaches, true())
        .join(addresses, true())
        .join(stored, true())
    )
    return select(conversations, surveys, breaches, addresses, stored).select_from(everything)


async def one(
    session: AsyncSession, customer_id: int, now: datetime, cfg: InsightConfig
) -> tuple[Signals, Stored | None]:
    conn = await session.connection()
    r = (
        await conn.execute(
            _one_statement(conn.dialect.name),
            {"cid": customer_id, "since": _naive(now - cfg.window)},
        )
    ).one()
    s = Signals(
        open_complaints=int(r.open_n or 0),
        recent_complaints=int(r.recent_n or 0),
        high_severity=int(r.high_n or 0),
        last_complaint_at=_parse(r.last_complaint),
        worst_csat=int(r.worst) if r.worst is not None else None,
        last_low_csat_at=_parse(r.low_at),
        sla_breaches=int(r.breaches or 0),
        identities=int(r.addresses or 0),
        unreachable=int(r.unreachable or 0),
    )
    if s.high_severity:
        st = _statements(conn.dialect.name)
        for _cid, reason in await conn.execute(
            st["cues"], {"ids": [customer_id], "since": _naive(now - cfg.window)}
        ):
            if reason not in s.high_severity_cues and (
                _severe_cue(reason) or not s.high_severity_cues
            ):
                s.high_severity_cues.append(reason)
    if not r.stored:
        return s, None
    return s, Stored(
        float(r.rate_fast or 0.0),
        float(r.rate_slow or 0.0),
        _parse(r.rate_at),
        _parse(r.last_contact_at),
        bool(r.opted_out),
        _parse(r.alerted_at),
        int(r.crossings or 0),
    )


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


def _parse(value: object) -> datetime | None:
    """Aggregates (max of a column) come back as text on SQLite, without the column's type."""
    if value is None:
        return None
    if isinstance(value, datetime):  # PostgreSQL: naive UTC, as stored
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
