"""Segment membership (客户分群) in SQL: a segment's conditions as a WHERE clause over customers
and their health row, and the few rows the per-customer check (the router's) reads.

Tags (a JSON list) and language (normalised: zh-CN is zh) are checked on the rows as they stream:
a JSON list and a language tag have no portable SQL test on both databases.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import CustomerSegmentConfig
from bot.language import language_of
from storage.models import Customer, CustomerHealth, Identity

DEFAULT_DAYS = {"new": 30, "active": 30, "silent": 30, "lapsed": 180}


def days_of(seg: CustomerSegmentConfig) -> int:
    assert seg.activity is not None
    return seg.days or DEFAULT_DAYS[seg.activity]


def _conditions(seg: CustomerSegmentConfig, now: datetime) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = [
        Customer.forgotten_at.is_(None),
        Customer.merged_into.is_(None),
    ]
    if seg.vip is not None:
        where.append(Customer.vip.is_(seg.vip))
    if seg.marketing_consent is not None:
        where.append(Customer.marketing_consent.is_(seg.marketing_consent))
    if seg.timezone is not None:
        where.append(Customer.timezone.in_(seg.timezone))
    if seg.has_birthday is not None:
        where.append(
            Customer.birthday_md.is_not(None)
            if seg.has_birthday
            else Customer.birthday_md.is_(None)
        )
    if seg.channel is not None:
        where.append(
            exists().where(Identity.customer_id == Customer.id, Identity.channel.in_(seg.channel))
        )
    if seg.band is not None:
        bands = list(seg.band)
        if "ok" in bands:  # never scored yet: nothing against them
            where.append(or_(CustomerHealth.band.in_(bands), CustomerHealth.customer_id.is_(None)))
        else:
            where.append(CustomerHealth.band.in_(bands))
    if seg.activity is not None:
        cutoff = now - timedelta(days=days_of(seg))
        last = CustomerHealth.last_contact_at
        if seg.activity == "new":
            where.append(Customer.created_at >= cutoff)
        elif seg.activity == "active":
            where.append(last >= cutoff)
        elif seg.activity == "silent":
            where.append(or_(last.is_(None), last < cutoff))
        else:
            where.append(and_(last.is_not(None), last < cutoff))
    return where


def row_filters(seg: CustomerSegmentConfig, tags: Iterable[str], language: str | None) -> bool:
    """The conditions checked on the rows: tags and language."""
    if seg.tags is not None and not set(seg.tags) & set(tags or ()):
        return False
    if seg.language is not None:
        wanted = {language_of(x, "") for x in seg.language}
        if language_of(language, "") not in wanted:
            return False
    return True


async def members(
    session: AsyncSession,
    seg: CustomerSegmentConfig,
    now: datetime,
    *,
    among: Sequence[int] | None = None,
) -> set[int]:
    """The ids of the segment's customers (of `among` only, when given), streamed."""
    query = (
        select(Customer.id, Customer.tags, Customer.language)
        .outerjoin(CustomerHealth, CustomerHealth.customer_id == Customer.id)
        .where(*_conditions(seg, now))
    )
    if among is not None:
        query = query.where(Customer.id.in_(list(among)))
    found: set[int] = set()
    result = await session.stream(query.execution_options(yield_per=5000))
    async for cid, tags, language in result:
        if row_filters(seg, tags or (), language):
            found.add(int(cid))
    return found


async def health_of(session: AsyncSession, customer_id: int) -> CustomerHealth | None:
    return await session.get(CustomerHealth, customer_id)


async def channels_of(session: AsyncSession, customer_id: int) -> set[str]:
    """The channels the customer has an address on."""
    return set(
        (
            await session.scalars(
                select(Identity.channel).where(Identity.customer_id == customer_id)
            )
        ).all()
    )
