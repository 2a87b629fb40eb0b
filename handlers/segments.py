"""Customer segments (客户分群): named groups from [insight.segments], by tags, VIP, language,
channel, activity (new, active, silent, lapsed), health band and imported fields.

Two ways to ask, one definition: `members` selects a segment's customers in SQL (`kefu segments`,
the at-risk list, the report, campaign planning); `of_customer` says which segments one customer is
in, in Python, for the router deciding where a message goes. Activity reads the last contact kept
in customer_health (handlers/churn.py keeps it current on every message).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import Config, ConfigError, CustomerSegmentConfig
from bot.effects import CustomerView
from handlers.templating import language_of
from storage.db import Database
from storage.models import Customer, CustomerHealth, Identity

DEFAULT_DAYS = {"new": 30, "active": 30, "silent": 30, "lapsed": 180}


def definition(name: str, config: Config) -> CustomerSegmentConfig:
    try:
        return config.insight.segments[name]
    except KeyError:
        known = ", ".join(sorted(config.insight.segments)) or "none configured"
        raise ConfigError(f"no segment {name!r} in [insight.segments] (known: {known})") from None


def days_of(seg: CustomerSegmentConfig) -> int:
    assert seg.activity is not None
    return seg.days or DEFAULT_DAYS[seg.activity]


def describe(seg: CustomerSegmentConfig) -> str:
    parts: list[str] = []
    for key, given in seg.model_dump(exclude_none=True).items():
        if key == "days":
            continue
        if key == "activity":
            shown = f"{given} ({days_of(seg)} d)"
        elif isinstance(given, list):
            shown = "|".join(str(v) for v in given)
        else:
            shown = str(given)
        parts.append(f"{key}={shown}")
    return ", ".join(parts) or "everyone"


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


def _python_filters(seg: CustomerSegmentConfig, tags: Iterable[str], language: str | None) -> bool:
    """Tags (a JSON list) and language (normalised: zh-CN is zh) are checked on the rows."""
    if seg.tags is not None and not set(seg.tags) & set(tags or ()):
        return False
    if seg.language is not None:
        wanted = {language_of(x, "") for x in seg.language}
        if language_of(language, "") not in wanted:
            return False
    return True


async def members(
    db: Database, config: Config, name: str, now: datetime, *, among: Sequence[int] | None = None
) -> set[int]:
    async with db.sessions() as session:
        return await members_in(session, config, name, now, among=among)


async def members_in(
    session: AsyncSession,
    config: Config,
    name: str,
    now: datetime,
    *,
    among: Sequence[int] | None = None,
) -> set[int]:
    seg = definition(name, config)
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
        if _python_filters(seg, tags or (), language):
            found.add(int(cid))
    return found


async def of_customer(
    session: AsyncSession,
    config: Config,
    customer: Customer | CustomerView,
    channel: str,
    now: datetime,
) -> frozenset[str]:
    """The segments one customer is in, the moment they write on `channel`."""
    segs = config.insight.segments
    if not segs or customer.forgotten_at is not None:
        return frozenset()
    health = await session.get(CustomerHealth, customer.id)
    channels: set[str] | None = None
    inside: set[str] = set()
    for name, seg in segs.items():
        if not _python_filters(seg, customer.tags or (), customer.language):
            continue
        if seg.vip is not None and bool(customer.vip) != seg.vip:
            continue
        if (
            seg.marketing_consent is not None
            and bool(customer.marketing_consent) != seg.marketing_consent
        ):
            continue
        if seg.timezone is not None and customer.timezone not in seg.timezone:
            continue
        if seg.has_birthday is not None and (customer.birthday_md is not None) != seg.has_birthday:
            continue
        if seg.channel is not None:
            if channels is None:
                channels = {channel} | set(
                    (
                        await session.scalars(
                            select(Identity.channel).where(Identity.customer_id == customer.id)
                        )
                    ).all()
                )
            if not channels & set(seg.channel):
                continue
        if seg.band is not None and (health.band if health is not None else "ok") not in seg.band:
            continue
        if seg.activity is not None and not _active(seg, customer, health, now):
            continue
        inside.add(name)
    return frozenset(inside)


def _active(
    seg: CustomerSegmentConfig,
    customer: Customer | CustomerView,
    health: CustomerHealth | None,
    now: datetime,
) -> bool:
    cutoff = now - timedelta(days=days_of(seg))
    # The last contact before this message: the customer writing now is not "active" by it.
    last = health.last_contact_at if health is not None else None
    if seg.activity == "new":
        return customer.created_at is not None and customer.created_at >= cutoff
    if seg.activity == "active":
        return last is not None and last >= cutoff
    if seg.activity == "silent":
        return last is None or last < cutoff
    return last is not None and last < cutoff


def check_names(config: Config) -> None:
    """Every segment a routing rule or campaign names exists: a typo stops start-up."""
    known = config.insight.segments
    named: list[tuple[str, str | None]] = [
        (f"[routing.rules.{n}] segment", rule.segment)
        for n, rule in enumerate(config.routing.rules)
    ]
    named.append(
        ("[campaigns.birthday.segment] segment", config.campaigns.birthday.segment.segment)
    )
    named.append(
        ("[campaigns.holidays.segment] segment", config.campaigns.holidays.segment.segment)
    )
    named.append(("[campaigns.followup] segment", config.campaigns.followup.segment))
    for key, name in named:
        if name is not None and name not in known:
            raise ConfigError(
                f"{key} has value {name!r}: no such segment in [insight.segments] "
                f"(known: {', '.join(sorted(known)) or 'none configured'})"
            )


def summary(config: Config) -> list[dict[str, Any]]:
    return [{"name": n, "definition": describe(s)} for n, s in config.insight.segments.items()]
