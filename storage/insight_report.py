"""The report page's series (`kefu report --format html`): complaints per week by severity,
response and resolution times in buckets, CSAT per week, breaches per week, health bands, customers
at risk by segment and the most at risk. Forgotten and merged customers are in none of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import Conversation, Customer, CustomerHealth, SlaBreach, Staff, Survey
from storage.reports import seconds_between, week_start

# Upper bounds in seconds of the time buckets; None: everything above the last bound.
BOUNDS: tuple[float | None, ...] = (15 * 60, 3600, 4 * 3600, 24 * 3600, 3 * 86400, None)


@dataclass
class Series:
    """What the report page's charts draw, beyond the figures of storage/reports.py."""

    complaints_by_week: dict[str, dict[str, int]] = field(
        default_factory=dict
    )  # week -> severity -> n
    first_response: list[int] = field(default_factory=list)  # count per bucket
    resolution: list[int] = field(default_factory=list)
    csat_by_week: list[tuple[str, float, int]] = field(
        default_factory=list
    )  # week, average, answers
    breaches_by_week: dict[str, dict[str, int]] = field(default_factory=dict)  # week -> target -> n
    bands: dict[str, int] = field(default_factory=dict)
    at_risk_by_segment: list[tuple[str, int]] = field(default_factory=list)
    top: list[dict[str, Any]] = field(default_factory=list)


def _buckets(value: ColumnElement[float]) -> ColumnElement[int]:
    # SQLite's julianday arithmetic puts exactly an hour at 3599.9999 s: bounds get 10 ms of slack.
    whens = [(value < bound - 0.01, n) for n, bound in enumerate(BOUNDS) if bound is not None]
    return case(*whens, else_=len(BOUNDS) - 1)


async def series(
    session: AsyncSession,
    since: datetime | None,
    *,
    threshold: int,
    segments: Sequence[tuple[str, set[int] | None]] = (),
    top: int = 10,
) -> Series:
    out = Series()
    created = [Conversation.created_at >= since] if since else []
    week = week_start(session, Conversation.created_at)
    severity = func.coalesce(Conversation.severity, "normal")
    rows = await session.execute(
        select(week, severity, func.count())
        .where(Conversation.is_complaint.is_(True), *created)
        .group_by(week, severity)
        .order_by(week)
    )
    for w, sev, n in rows:
        out.complaints_by_week.setdefault(str(w), {})[str(sev)] = int(n)
    for name, end in (
        ("first_response", Conversation.first_response_at),
        ("resolution", Conversation.resolved_at),
    ):
        bucket = _buckets(seconds_between(session, end, Conversation.created_at))
        counts = [0] * len(BOUNDS)
        for b, n in await session.execute(
            select(bucket, func.count()).where(end.is_not(None), *created).group_by(bucket)
        ):
            counts[int(b)] = int(n)
        setattr(out, name, counts)
    answered: list[ColumnElement[bool]] = [
        Survey.score.is_not(None),
        Survey.answered_at.is_not(None),
    ]
    if since:
        answered.append(Survey.answered_at >= since)
    sweek = week_start(session, Survey.answered_at)
    out.csat_by_week = [
        (str(w), round(float(avg), 2), int(n))
        for w, avg, n in await session.execute(
            select(sweek, func.avg(Survey.score), func.count())
            .where(*answered)
            .group_by(sweek)
            .order_by(sweek)
        )
    ]
    bweek = week_start(session, SlaBreach.breached_at)
    bwhere = [SlaBreach.breached_at >= since] if since else []
    for w, target, n in await session.execute(
        select(bweek, SlaBreach.target, func.count())
        .where(*bwhere)
        .group_by(bweek, SlaBreach.target)
        .order_by(bweek)
    ):
        out.breaches_by_week.setdefault(str(w), {})[str(target)] = int(n)
    live = [Customer.forgotten_at.is_(None), Customer.merged_into.is_(None)]
    for band, n in await session.execute(
        select(CustomerHealth.band, func.count())
        .join(Customer, Customer.id == CustomerHealth.customer_id)
        .where(*live)
        .group_by(CustomerHealth.band)
    ):
        out.bands[str(band)] = int(n)
    at_risk_ids = set(
        (
            await session.scalars(
                select(CustomerHealth.customer_id)
                .join(Customer, Customer.id == CustomerHealth.customer_id)
                .where(CustomerHealth.score >= threshold, *live)
            )
        ).all()
    )
    for name, members in segments:
        out.at_risk_by_segment.append(
            (name, len(at_risk_ids if members is None else at_risk_ids & members))
        )
    rows2 = await session.execute(
        select(CustomerHealth, Customer.display_name)
        .join(Customer, Customer.id == CustomerHealth.customer_id)
        .where(CustomerHealth.score >= threshold, *live)
        .order_by(CustomerHealth.score.desc(), CustomerHealth.customer_id)
        .limit(top)
    )
    out.top = [
        {
            "customer_id": h.customer_id,
            "name": name,
            "score": h.score,
            "reasons": h.reasons or [],
            "last_contact": h.last_contact_at,
        }
        for h, name in rows2
    ]
    return out


async def at_risk(
    session: AsyncSession, *, min_score: int, limit: int, among: set[int] | None = None
) -> list[dict[str, Any]]:
    """The live customers scoring min_score or more, highest first: their score row's figures,
    name, latest conversation and its assignee's name (the owner)."""
    query = (
        select(CustomerHealth, Customer.display_name)
        .join(Customer, Customer.id == CustomerHealth.customer_id)
        .where(
            CustomerHealth.score >= min_score,
            Customer.forgotten_at.is_(None),
            Customer.merged_into.is_(None),
        )
        .order_by(CustomerHealth.score.desc(), CustomerHealth.customer_id)
    )
    if among is not None:
        query = query.where(CustomerHealth.customer_id.in_(among))
    found = list((await session.execute(query.limit(limit))).all())
    ids = [h.customer_id for h, _ in found]
    owners: dict[int, tuple[int, str | None]] = {}
    if ids:
        latest = (
            select(Conversation.customer_id, func.max(Conversation.id).label("id"))
            .where(Conversation.customer_id.in_(ids))
            .group_by(Conversation.customer_id)
            .subquery()
        )
        owners = {
            cid: (conv, name)
            for cid, conv, name in await session.execute(
                select(latest.c.customer_id, latest.c.id, Staff.name)
                .join(Conversation, Conversation.id == latest.c.id)
                .outerjoin(Staff, Staff.id == Conversation.assignee)
            )
        }
    rows = []
    for h, name in found:
        conversation, owner = owners.get(h.customer_id, (None, None))
        rows.append(
            {
                "customer_id": h.customer_id,
                "name": name,
                "score": h.score,
                "band": h.band,
                "reasons": list(h.reasons or []),
                "last_contact_at": h.last_contact_at,
                "owner": owner,
                "conversation_id": conversation,
            }
        )
    return rows


async def scores_of(session: AsyncSession, ids: Sequence[int]) -> list[dict[str, Any]]:
    """Customers by id with their score, band and last contact (0, ok, none: never scored)."""
    rows = await session.execute(
        select(
            Customer.id,
            Customer.display_name,
            CustomerHealth.score,
            CustomerHealth.band,
            CustomerHealth.last_contact_at,
        )
        .outerjoin(CustomerHealth, CustomerHealth.customer_id == Customer.id)
        .where(Customer.id.in_(list(ids)))
        .order_by(Customer.id)
    )
    return [
        {
            "customer_id": cid,
            "name": n,
            "score": sc or 0,
            "band": b or "ok",
            "last_contact": lc.isoformat() if lc else None,
        }
        for cid, n, sc, b, lc in rows
    ]
