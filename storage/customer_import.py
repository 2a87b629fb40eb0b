"""Customer import, the storage part: validated records upserted in batches of a few statements.

A row matches an existing customer by any of its identities (email, phone, Telegram id) and
updates only the fields it fills; a row whose identities point at two different customers is
rejected (merge them first). Each batch is one transaction: a crash loses at most the batch in
flight, and running the same file again finishes the job without changing what is already there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from storage.db import Database
from storage.models import Customer, Identity, utcnow
from storage.rows import reserve_ids, table_of


@dataclass(frozen=True, slots=True)
class Record:
    """A valid row. None means the cell was empty: the stored value stays as it is."""

    row: int
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    telegram_id: str | None = None
    birthday: date | None = None
    birthday_md: str | None = None
    timezone: str | None = None
    language: str | None = None
    tags: tuple[str, ...] | None = None
    marketing_consent: bool | None = None
    vip: bool | None = None

    def identities(self) -> list[tuple[str, str]]:
        pairs = [("email", self.email), ("phone", self.phone), ("telegram", self.telegram_id)]
        return [(channel, address) for channel, address in pairs if address]


@dataclass(frozen=True, slots=True)
class Rejected:
    row: int
    reason: str
    values: Mapping[str, str]


# Fields a row may set; None in a record leaves the stored value alone.
FIELDS = (
    "display_name",
    "birthday",
    "birthday_md",
    "timezone",
    "language",
    "tags",
    "marketing_consent",
    "vip",
)


@dataclass
class Counts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[Rejected] = field(default_factory=list)

    def add(self, other: Counts) -> None:
        self.created += other.created
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.rejected.extend(other.rejected)


def _wanted(record: Record) -> dict[str, Any]:
    values: dict[str, Any] = {
        "display_name": record.name,
        "timezone": record.timezone,
        "language": record.language,
        "tags": list(record.tags) if record.tags is not None else None,
        "marketing_consent": record.marketing_consent,
        "vip": record.vip,
    }
    values = {k: v for k, v in values.items() if v is not None}
    if record.birthday_md is not None:
        # Birthday and its month-day move together; a year-less birthday clears a stale full date.
        values["birthday"] = record.birthday
        values["birthday_md"] = record.birthday_md
    return values


async def upsert(db: Database, records: Sequence[Record]) -> Counts:
    """One batch, one transaction; retried once if a concurrent writer took an identity first."""
    for attempt in (1, 2):
        try:
            async with db.transaction() as session:
                return await _upsert(session, records)
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


async def _upsert(session: AsyncSession, records: Sequence[Record]) -> Counts:
    counts = Counts()
    keys = {key for r in records for key in r.identities()}
    owner: dict[tuple[str, str], int] = {}
    by_channel: dict[str, set[str]] = {}
    for channel, address in keys:
        by_channel.setdefault(channel, set()).add(address)
    for channel, addresses in by_channel.items():
        # One query per channel: "channel = ? AND address IN (...)" walks the unique index,
        # where a row-value IN over both columns makes SQLite scan.
        found = await session.execute(
            select(Identity.address, Identity.customer_id).where(
                Identity.channel == channel, Identity.address.in_(addresses)
            )
        )
        owner.update({(channel, a): cid for a, cid in found})
    state: dict[int, dict[str, Any]] = {}
    if owner:
        columns = [getattr(Customer, f) for f in FIELDS]
        rows = await session.execute(
            select(Customer.id, *columns).where(Customer.id.in_(set(owner.values())))
        )
        for row in rows:
            state[row[0]] = dict(zip(FIELDS, row[1:], strict=True))
            state[row[0]]["tags"] = sorted(state[row[0]]["tags"] or [])

    # New customers get negative placeholder ids until the batch insert hands out real ones.
    new_ids: list[int] = []
    changed: set[int] = set()
    new_identities: list[tuple[int, str, str]] = []
    for record in records:
        pairs = record.identities()
        matched = {owner[k] for k in pairs if k in owner}
        if len(matched) > 1:
            counts.rejected.append(Rejected(record.row, _conflict(pairs, owner), _shown(record)))
            continue
        wanted = _wanted(record)
        if not matched:
            cid = -(len(new_ids) + 1)
            new_ids.append(cid)
            state[cid] = {
                "display_name": None,
                "birthday": None,
                "birthday_md": None,
                "timezone": None,
                "language": None,
                "tags": [],
                "marketing_consent": False,
                "vip": False,
                **wanted,
            }
            counts.created += 1
        else:
            cid = matched.pop()
            current = state[cid]
            diff = {k: v for k, v in wanted.items() if current.get(k) != v}
            fresh = [k for k in pairs if k not in owner]
            if diff or fresh:
                current.update(diff)
                if cid > 0:
                    changed.add(cid)
                counts.updated += 1
            else:
                counts.unchanged += 1
        for key in pairs:
            if key not in owner:
                owner[key] = cid
                new_identities.append((cid, *key))

    real: dict[int, int] = {}
    if new_ids:
        now = utcnow()
        ids = await reserve_ids(session, table_of(Customer), len(new_ids))
        real = dict(zip(new_ids, ids, strict=True))
        await session.execute(
            insert(table_of(Customer)),
            [{**state[cid], "id": real[cid], "created_at": now} for cid in new_ids],
        )
    if changed:
        await session.execute(
            update(Customer), [{"id": cid, **state[cid]} for cid in sorted(changed)]
        )
    if new_identities:
        now = utcnow()
        await session.execute(
            insert(table_of(Identity)),
            [
                {
                    "customer_id": real.get(cid, cid),
                    "channel": channel,
                    "address": address,
                    "reachable": True,
                    "created_at": now,
                }
                for cid, channel, address in new_identities
            ],
        )
    return counts


def _conflict(pairs: list[tuple[str, str]], owner: dict[tuple[str, str], int]) -> str:
    def who(cid: int) -> str:
        return f"customer {cid}" if cid > 0 else "a customer created by an earlier row"

    parts = [f"{c} {a} belongs to {who(owner[(c, a)])}" for c, a in pairs if (c, a) in owner]
    ids = sorted({owner[k] for k in pairs if k in owner and owner[k] > 0})
    hint = f"; merge them first: kefu customers merge {ids[0]} {ids[1]}" if len(ids) == 2 else ""
    return "identities of different customers: " + ", ".join(parts) + hint


def _shown(record: Record) -> dict[str, str]:
    return {
        "name": record.name or "",
        "email": record.email or "",
        "phone": record.phone or "",
        "telegram_id": record.telegram_id or "",
    }
