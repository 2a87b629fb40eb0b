"""Customer segments (客户分群): named groups from [insight.segments], by tags, VIP, language,
channel, activity (new, active, silent, lapsed), health band and imported fields.

Two ways to ask, one definition: `members` selects a segment's customers in SQL
(storage/insight_segments.py; `kefu segments`, the at-risk list, the report, campaign planning);
`of_customer` says which segments one customer is in, in Python, for the router deciding where a
message goes. Activity reads the last contact kept
in customer_health (handlers/churn.py keeps it current on every message).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import Config, ConfigError, CustomerSegmentConfig
from bot.effects import CustomerView
from bot.lookup import HealthView, Lookup
from storage import insight_segments as store
from storage.db import Database
from storage.insight_segments import DEFAULT_DAYS, days_of
from storage.models import Customer

__all__ = ["DEFAULT_DAYS", "days_of"]


def definition(name: str, config: Config) -> CustomerSegmentConfig:
    try:
        return config.insight.segments[name]
    except KeyError:
        known = ", ".join(sorted(config.insight.segments)) or "none configured"
        raise ConfigError(f"no segment {name!r} in [insight.segments] (known: {known})") from None


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
    return await store.members(session, definition(name, config), now, among=among)


async def of_customer(
    reads: Lookup,
    config: Config,
    customer: Customer | CustomerView,
    channel: str,
    now: datetime,
    *,
    among: Collection[str] | None = None,
) -> frozenset[str]:
    """The segments one customer is in (of `among`, if given), the moment they write on
    `channel`. Asked for every message the router sees: the customer's addresses and health row
    are read only for a segment that needs them, once the customer's own fields have matched."""
    segs = config.insight.segments
    if not segs or customer.forgotten_at is not None:
        return frozenset()
    health: HealthView | None = None
    health_read = False
    channels: set[str] | None = None
    inside: set[str] = set()
    for name, seg in segs.items():
        if among is not None and name not in among:
            continue
        if not store.row_filters(seg, customer.tags or (), customer.language):
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
                channels = {channel} | await reads.channels_of(customer.id)
            if not channels & set(seg.channel):
                continue
        if not health_read and (seg.band is not None or seg.activity not in (None, "new")):
            health, health_read = await reads.health(customer.id), True
        if seg.band is not None and (health.band if health is not None else "ok") not in seg.band:
            continue
        if seg.activity is not None and not _active(seg, customer, health, now):
            continue
        inside.add(name)
    return frozenset(inside)


def _active(
    seg: CustomerSegmentConfig,
    customer: Customer | CustomerView,
    health: HealthView | None,
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
