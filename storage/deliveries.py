"""The outbox table's queries on the delivery side: claiming due rows under a lease token,
keeping the lease, and recording each outcome.

The delivery loop that uses them (timers, channels, backoff, metrics) is bot/outbox.py, through
`Deliveries`, whose every call is a transaction of its own. Every
change to a claimed row names the claim token, so a row another worker re-claimed after a lease
ran out is left to that worker."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.effects import Event
from storage import dialect, interactions
from storage.conversations import set_staff_place
from storage.db import Database
from storage.models import OUTBOX_WAITING, Identity, OutboxRow
from storage.rows import rowcount

log = logging.getLogger("kefu.outbox")


async def release_orphans(session: AsyncSession) -> int:
    """Rows left 'sending' by a process that died are due now (SQLite: one kefu process)."""
    result = await session.execute(
        update(OutboxRow)
        .where(OutboxRow.status == "sending")
        # The send it was making may have happened: it counts as an attempt.
        .values(
            status="pending",
            claimed_until=None,
            claim_token=None,
            attempts=OutboxRow.attempts + 1,
        )
    )
    return rowcount(result)


@dataclass(frozen=True, slots=True)
class Claimed:
    rows: list[OutboxRow]
    was: dict[int, str]  # each row's status before the claim, to hand it back unchanged


async def claim(
    session: AsyncSession,
    channels: Sequence[str],
    now: datetime,
    *,
    limit: int,
    lease: timedelta,
    token: str,
) -> Claimed:
    """Claims due rows in id order. One address's messages go out in the order they were
    queued: while one of them waits for a retry or a deferral, or is being sent, none after
    it is claimed. A dead row holds nothing back (staff see its failure in the log)."""
    sqlite = dialect.is_sqlite(session)
    busy = (
        select(OutboxRow.channel, OutboxRow.address)
        .where(
            OutboxRow.channel.in_(channels),
            or_(
                and_(
                    OutboxRow.status.in_(("failed", "deferred")),
                    OutboxRow.next_attempt_at > now,
                ),
                and_(OutboxRow.status == "sending", OutboxRow.claimed_until >= now),
            ),
        )
    )
    query = (
        select(OutboxRow)
        .where(
            OutboxRow.channel.in_(channels),
            or_(
                and_(OutboxRow.status.in_(OUTBOX_WAITING), OutboxRow.next_attempt_at <= now),
                and_(OutboxRow.status == "sending", OutboxRow.claimed_until < now),
            ),
            tuple_(OutboxRow.channel, OutboxRow.address).not_in(busy),
        )
        .order_by(OutboxRow.id)
        .limit(limit)
    )
    if not sqlite:
        query = query.with_for_update(skip_locked=True)
    rows = list(await session.scalars(query))
    if rows and not sqlite:
        rows = await _first_in_line(session, rows, now)
    was: dict[int, str] = {}
    for row in rows:
        was[row.id] = "pending" if row.status == "sending" else row.status
        if row.status == "sending":
            # Its worker's lease ran out: that send may have happened, so it counts.
            row.attempts += 1
        row.status = "sending"
        row.claimed_until = now + lease
        row.claim_token = token
    return Claimed(rows, was)


async def _first_in_line(
    session: AsyncSession, rows: list[OutboxRow], now: datetime
) -> list[OutboxRow]:
    """Keeps the rows that are first in their address's line. Several workers (PostgreSQL) skip
    rows another one has locked: a row whose earlier sibling is locked elsewhere must wait."""
    mine = {row.id for row in rows}
    top = max(mine)
    by_channel: dict[str, set[str]] = {}
    for row in rows:
        by_channel.setdefault(row.channel, set()).add(row.address)
    line: dict[tuple[str, str], list[int]] = {}
    for channel, addresses in by_channel.items():
        result = await session.execute(
            select(OutboxRow.address, OutboxRow.id)
            .where(
                OutboxRow.channel == channel,
                OutboxRow.address.in_(sorted(addresses)),
                OutboxRow.id <= top,
                or_(
                    OutboxRow.status.in_(("sending", "failed", "deferred")),
                    and_(OutboxRow.status == "pending", OutboxRow.next_attempt_at <= now),
                ),
            )
            .order_by(OutboxRow.id)
        )
        for address, row_id in result:
            line.setdefault((channel, address), []).append(row_id)
    first: set[int] = set()
    for ids in line.values():
        for row_id in ids:
            if row_id not in mine:
                break
            first.add(row_id)
    return [row for row in rows if row.id in first]


async def extend_lease(session: AsyncSession, token: str, until: datetime) -> set[int]:
    """Moves the lease of the claim's rows still held; returns their ids."""
    return set(
        await session.scalars(
            update(OutboxRow)
            .where(OutboxRow.claim_token == token)
            .values(claimed_until=until)
            .returning(OutboxRow.id)
        )
    )


async def release(session: AsyncSession, row_id: int, token: str, status: str) -> None:
    """Hands a claimed row back untried, with the status it had, without counting an attempt."""
    await session.execute(
        update(OutboxRow)
        .where(OutboxRow.id == row_id, OutboxRow.claim_token == token)
        .values(status=status, claimed_until=None, claim_token=None)
    )


class Deliveries:
    """The outbox worker's storage: each call is one transaction of its own, so the delivery
    loop (bot/outbox.py) reads and records through this module alone."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def release_orphans(self) -> int:
        """On SQLite there is one kefu process: rows it left 'sending' when it died are due now.
        Elsewhere other processes may hold them; their lease expiry frees them instead."""
        if not self.db.is_sqlite:
            return 0
        async with self.db.transaction() as session:
            return await release_orphans(session)

    async def claim(
        self, channels: Sequence[str], now: datetime, *, limit: int, lease: timedelta, token: str
    ) -> Claimed:
        async with self.db.transaction() as session:
            return await claim(session, channels, now, limit=limit, lease=lease, token=token)

    async def extend_lease(self, token: str, until: datetime) -> set[int]:
        async with self.db.transaction() as session:
            return await extend_lease(session, token, until)

    async def release(self, row_id: int, token: str, status: str) -> None:
        async with self.db.transaction() as session:
            await release(session, row_id, token, status)

    async def finish(
        self,
        row: OutboxRow,
        status: str,
        now: datetime,
        *,
        error: str | None = None,
        external_id: str | None = None,
        next_attempt_at: datetime | None = None,
        unreachable: bool = False,
        place: str | None = None,
        count: bool = True,
    ) -> bool:
        """Records a send's outcome on the row, if the claim is still ours; in the same
        transaction a dead row's consequences and the place the channel gave the conversation (a
        staff topic). False: another worker re-claimed the row after our lease, and it is theirs:
        nothing is recorded."""
        values: dict[str, object] = {"status": status, "claimed_until": None, "claim_token": None}
        if count:
            values["attempts"] = OutboxRow.attempts + 1
        if status == "sent":
            values.update(sent_at=now, external_id=external_id, last_error=None)
        else:
            values["last_error"] = error
        if next_attempt_at is not None:
            values["next_attempt_at"] = next_attempt_at
        async with self.db.transaction() as session:
            done = await session.execute(
                update(OutboxRow)
                .where(OutboxRow.id == row.id, OutboxRow.claim_token == row.claim_token)
                .values(**values)
            )
            if not rowcount(done):
                log.warning(
                    "outbox.claim.lost id=%s outcome=%s: another worker holds it", row.id, status
                )
                return False
            if status == "dead":
                await _record_dead(session, row, error or "", unreachable, now)
            if place is not None and row.conversation_id is not None:
                await set_staff_place(session, row.conversation_id, place)
            return True


async def _record_dead(
    session: AsyncSession, row: OutboxRow, error: str, unreachable: bool, now: datetime
) -> None:
    """A dead row: the address marked unreachable if the channel said so, and the failure logged
    in the conversation's own log, where staff work."""
    if unreachable:
        await session.execute(
            update(Identity)
            .where(Identity.channel == row.channel, Identity.address == row.address)
            .values(reachable=False, unreachable_reason=error)
        )
    conversation_id = row.payload.get("conversation_id")
    if conversation_id is not None:
        interactions.add_event(
            session,
            Event(
                row.payload.get("customer_id"),
                row.channel,
                f"delivery failed on {row.channel}: {error}",
                {"kind": "delivery_failed", "outbox_id": row.id},
                now,
                conversation_id=conversation_id,
            ),
        )
