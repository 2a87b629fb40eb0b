"""Customer health (流失预警): a churn-risk score from 0 to 100 per customer, with its reasons.

The signals are all in tables kefu already keeps: complaint conversations (unresolved, repeated,
high severity), survey scores, SLA breaches, the log (how often and how recently the customer
writes, an opt-out), identities (unreachable addresses). Each signal adds the points its
[insight.weights] entry gives, capped where a count could run away; the score is their sum, at
most 100. The reasons are the signals that fired, biggest first, with the facts behind them, so a
person can check each one against the customer's history.

The signals' SQL is in storage/insight.py: the full recompute reads them a chunk of customers at
a time (`gather`); the pipeline observer reads what it needs of a batch's customers in one
statement (`batch`), and nothing for first contacts asking plain questions. Message rates are
exponentially decayed counters (half-lives of 7 and 56 days): the observer updates them in O(1)
from the stored row; the full recompute rebuilds them from the log.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bot.config import InsightConfig
from bot.lookup import HealthRead, Lookup, Signals, Stored
from handlers import complaints
from storage.insight import FAST_DAYS, LOW_CSAT, SLOW_DAYS

__all__ = ["FAST_DAYS", "LOW_CSAT", "SLOW_DAYS", "Signals", "Stored"]

CAPS = {"open_complaint": 2, "repeat_complaint": 3, "sla_breach": 3}


def decay(value: float, since: datetime | None, now: datetime, half_life_days: float) -> float:
    if since is None or value == 0.0:
        return 0.0 if since is None else value
    days = max((now - since).total_seconds(), 0.0) / 86400.0
    return float(value * 0.5 ** (days / half_life_days))


def per_week(decayed: float, half_life_days: float) -> float:
    """A decayed count of a steady stream of r messages a day settles at r * h / ln 2."""
    return decayed * math.log(2) / half_life_days * 7.0


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


# --- gathering the signals (the SQL is in storage/insight.py) ----------------------------------


async def gather(
    reads: Lookup,
    lo: int,
    hi: int,
    now: datetime,
    cfg: InsightConfig,
    *,
    from_log: bool,
    owners: bool = True,
) -> dict[int, Signals]:
    """Signals of the customers with ids lo..hi that have any rows; see storage.insight.gather."""
    return await reads.signals(
        lo, hi, now, cfg.window, _severe_cue, from_log=from_log, owners=owners
    )


async def batch(
    reads: Lookup,
    customer_ids: Sequence[int],
    signals_for: Sequence[int],
    now: datetime,
    cfg: InsightConfig,
) -> dict[int, HealthRead]:
    """A pipeline batch's customers in one read: stored rows, and signals where needed (see
    bot.lookup.Lookup.health_batch)."""
    return await reads.health_batch(customer_ids, signals_for, now, cfg.window, _severe_cue)


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
