"""Campaign storage: who is due a greeting, the exactly-once claim, expiry, cancellation, report.

The unique (campaign, occasion, customer_id) row is the claim: it is inserted with ON CONFLICT DO
NOTHING in the same transaction as the outbox row, so two planners (two processes on PostgreSQL,
or a rerun after a crash) can race and still produce one greeting per customer and occasion.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage import dialect
from storage.models import (
    OUTBOX_WAITING,
    CampaignDelivery,
    Customer,
    Identity,
    Interaction,
    OutboxRow,
)
from storage.rows import insert_many as insert_many
from storage.rows import reserve_ids as reserve_ids
from storage.rows import rowcount

CHUNK = 5000  # ids per IN (...): well under SQLite's bound-parameter limit


@dataclass(frozen=True, slots=True)
class Candidate:
    id: int
    display_name: str | None
    birthday: date | None
    birthday_md: str | None
    timezone: str | None
    language: str | None
    tags: tuple[str, ...]
    vip: bool
    preferred_channel: str | None


@dataclass(frozen=True, slots=True)
class Reachable:
    channel: str
    address: str
    reachable: bool
    reason: str | None


async def candidates(
    session: AsyncSession,
    *,
    campaign: str,
    occasion: str,
    month_days: Sequence[str] | None,
    vip_only: bool,
    after_id: int,
    limit: int,
) -> list[Candidate]:
    """Consenting, live customers without a delivery row for this occasion, by id (keyset pages).

    month_days narrows to birthdays by the indexed customers.birthday_md; None means everyone."""
    done = exists().where(
        CampaignDelivery.campaign == campaign,
        CampaignDelivery.occasion == occasion,
        CampaignDelivery.customer_id == Customer.id,
    )
    query = (
        select(
            Customer.id,
            Customer.display_name,
            Customer.birthday,
            Customer.birthday_md,
            Customer.timezone,
            Customer.language,
            Customer.tags,
            Customer.vip,
            Customer.preferred_channel,
        )
        .where(
            Customer.marketing_consent.is_(True),
            Customer.merged_into.is_(None),
            Customer.forgotten_at.is_(None),
            Customer.id > after_id,
            ~done,
        )
        .order_by(Customer.id)
        .limit(limit)
    )
    if month_days is not None:
        query = query.where(Customer.birthday_md.in_(month_days))
    if vip_only:
        query = query.where(Customer.vip.is_(True))
    rows = await session.execute(query)
    return [
        Candidate(r[0], r[1], r[2], r[3], r[4], r[5], tuple(r[6] or ()), bool(r[7]), r[8])
        for r in rows
    ]


def _chunks(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(ids), CHUNK):
        yield ids[start : start + CHUNK]


async def identities(session: AsyncSession, ids: Sequence[int]) -> dict[int, list[Reachable]]:
    """Each customer's identities, newest first."""
    found: dict[int, list[Reachable]] = {}
    for chunk in _chunks(ids):
        rows = await session.execute(
            select(
                Identity.customer_id,
                Identity.channel,
                Identity.address,
                Identity.reachable,
                Identity.unreachable_reason,
            )
            .where(Identity.customer_id.in_(chunk))
            .order_by(Identity.id.desc())
        )
        for cid, channel, address, reachable, reason in rows:
            found.setdefault(cid, []).append(Reachable(channel, address, bool(reachable), reason))
    return found


async def last_inbound(session: AsyncSession, ids: Sequence[int]) -> dict[int, tuple[str, str]]:
    """(channel, address) each customer last wrote from."""
    found: dict[int, tuple[str, str]] = {}
    for chunk in _chunks(ids):
        latest = (
            select(func.max(Interaction.id))
            .where(Interaction.customer_id.in_(chunk), Interaction.direction == "in")
            .group_by(Interaction.customer_id)
        )
        rows = await session.execute(
            select(Interaction.customer_id, Interaction.channel, Interaction.author_id).where(
                Interaction.id.in_(latest)
            )
        )
        for cid, channel, address in rows:
            if cid is not None:  # always so (customer_id IN chunk); for the type checker
                found[cid] = (channel, address or "")
    return found


async def claim(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> dict[int, int]:
    """Inserts delivery rows that do not exist yet; returns {customer_id: delivery id} of those.

    Rows go in customer-id order, so two planners lock keys in the same order and cannot
    deadlock; the loser of a race waits for the winner's commit and then inserts nothing."""
    if not rows:
        return {}
    ordered = sorted(rows, key=lambda r: r["customer_id"])
    stmt = (
        dialect.insert(session, CampaignDelivery.__table__)
        .on_conflict_do_nothing(index_elements=["campaign", "occasion", "customer_id"])
        .returning(CampaignDelivery.__table__.c.customer_id, CampaignDelivery.__table__.c.id)
    )
    # executemany: SQLAlchemy sends it as multi-row INSERTs ("insertmanyvalues") in batches,
    # compiled once, instead of compiling one VALUES clause of a thousand rows per page.
    result = await session.execute(stmt, list(ordered))
    return {cid: did for cid, did in result}


async def link_outbox(session: AsyncSession, links: Sequence[tuple[int, int]]) -> None:
    """(delivery id, outbox id) pairs."""
    if links:
        await session.execute(
            update(CampaignDelivery), [{"id": did, "outbox_id": oid} for did, oid in links]
        )


async def _stop_waiting(
    session: AsyncSession, where: Any, status: str, reason: str, now: datetime
) -> int:
    """Marks unsent greetings dead in the outbox and `status` in campaign_deliveries."""
    rows = (
        await session.execute(
            select(CampaignDelivery.id, CampaignDelivery.outbox_id)
            .join(OutboxRow, OutboxRow.id == CampaignDelivery.outbox_id)
            .where(
                CampaignDelivery.status == "planned", OutboxRow.status.in_(OUTBOX_WAITING), where
            )
        )
    ).all()
    if not rows:
        return 0
    stopped = 0
    for chunk in _chunks([r[1] for r in rows if r[1] is not None]):
        result = await session.execute(
            update(OutboxRow)
            .where(OutboxRow.id.in_(chunk), OutboxRow.status.in_(OUTBOX_WAITING))
            .values(status="dead", last_error=reason, claimed_until=None)
        )
        stopped += rowcount(result)
    for chunk in _chunks([r[0] for r in rows]):
        await session.execute(
            update(CampaignDelivery)
            .where(CampaignDelivery.id.in_(chunk))
            .values(status=status, reason=reason)
        )
    return stopped


async def expire(
    session: AsyncSession, now: datetime, *, margin_until: datetime, since: datetime | None
) -> int:
    """Greetings whose local day ends before `margin_until` and are still unsent: never sent."""
    where = CampaignDelivery.expires_at <= margin_until
    if since is not None:
        where = and_(where, CampaignDelivery.expires_at > since)
    return await _stop_waiting(
        session,
        where,
        "expired",
        "greeting expired: the customer's day ended before it was sent",
        now,
    )


async def cancel_for(session: AsyncSession, customer_id: int, reason: str, now: datetime) -> int:
    return await _stop_waiting(
        session, CampaignDelivery.customer_id == customer_id, "cancelled", reason, now
    )


@dataclass(frozen=True, slots=True)
class ReportLine:
    campaign: str
    outcome: str  # planned | sent | failed | skipped
    reason: str
    count: int


async def report(session: AsyncSession, since: datetime | None) -> list[ReportLine]:
    query = (
        select(
            CampaignDelivery.campaign,
            CampaignDelivery.status,
            CampaignDelivery.reason,
            OutboxRow.status,
            OutboxRow.last_error,
            func.count(),
        )
        .outerjoin(OutboxRow, OutboxRow.id == CampaignDelivery.outbox_id)
        .group_by(
            CampaignDelivery.campaign,
            CampaignDelivery.status,
            CampaignDelivery.reason,
            OutboxRow.status,
            OutboxRow.last_error,
        )
    )
    if since is not None:
        query = query.where(CampaignDelivery.created_at >= since)
    totals: dict[tuple[str, str, str], int] = {}
    for campaign, status, reason, out_status, error, n in await session.execute(query):
        if status != "planned":
            key = (
                campaign,
                "skipped",
                f"{status}: {reason}" if status != "skipped" else reason or "",
            )
        elif out_status == "sent":
            key = (campaign, "sent", "")
        elif out_status == "dead":
            key = (campaign, "failed", error or "")
        else:
            key = (campaign, "planned", "")
        totals[key] = totals.get(key, 0) + n
    order = {"planned": 0, "sent": 1, "failed": 2, "skipped": 3}
    return [
        ReportLine(c, o, r, n)
        for (c, o, r), n in sorted(
            totals.items(), key=lambda kv: (kv[0][0], order[kv[0][1]], -kv[1])
        )
    ]
