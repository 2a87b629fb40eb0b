"""The outbox table's queries on the queueing side: queueing a row (with the bot's line in the
log), the staff feed's look-ups and merges of queued rows, and the listing, depth and retry behind
`kefu outbox` and /healthz. Claiming and recording sends is storage/deliveries.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.intents import Outbound, StaffNotice, from_payload, to_payload
from bot.text import utf16_len
from storage import dialect, interactions
from storage.models import (
    OUTBOX_UNSENT,
    CampaignDelivery,
    OutboxRow,
    utcnow,
)

# session.info key: this transaction queued a row (the worker is worth waking after its commit).
QUEUED = "kefu.outbox.queued"


def row(
    out: Outbound,
    *,
    next_attempt_at: datetime,
    interaction_id: int | None,
    created_at: datetime,
) -> dict[str, Any]:
    """The outbox row that queues `out`: its intent as to_payload writes it, pending, due at
    `next_attempt_at`. The one shape every queued row has (enqueue, and a campaign's bulk insert
    in handlers/greetings.py)."""
    return {
        "channel": out.channel,
        "address": out.address,
        "payload": out.to_payload(),
        "dedupe_key": out.dedupe_key,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": next_attempt_at,
        "interaction_id": interaction_id,
        "conversation_id": out.conversation_id,
        "created_at": created_at,
    }


async def enqueue(
    session: AsyncSession,
    out: Outbound,
    *,
    interaction_id: int | None = None,
    not_before: datetime | None = None,
) -> int | None:
    """Adds the row unless its dedupe key is already there; returns the new row id or None.

    `not_before` schedules it (a greeting at 09:00 in the customer's time zone)."""
    now = utcnow()
    values = row(
        out, next_attempt_at=not_before or now, interaction_id=interaction_id, created_at=now
    )
    stmt = (
        dialect.insert(session, OutboxRow)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(OutboxRow.id)
    )
    row_id = (await session.execute(stmt)).scalar_one_or_none()
    if row_id is not None:
        session.info[QUEUED] = True
    return row_id


async def say(
    session: AsyncSession,
    out: Outbound,
    *,
    log_meta: dict[str, object],
    at: datetime,
    not_before: datetime | None = None,
) -> int:
    """kefu's own message to a customer (an acknowledgement, a survey, a confirmation): logged in
    the unified log as the bot's, and queued, in the caller's transaction. Returns the log row
    id."""
    logged_id = await log_line(session, out, meta=log_meta, at=at)
    await enqueue(session, out, interaction_id=logged_id, not_before=not_before)
    return logged_id


async def log_line(
    session: AsyncSession,
    out: Outbound,
    *,
    author_kind: str = "bot",
    author_id: str | None = None,
    meta: dict[str, Any],
    at: datetime,
) -> int:
    """The unified log's line for `out`, a message kefu's side sends (the bot's own, an agent's
    answer), in the caller's transaction. Returns its id, which the outbox row points at."""
    return await interactions.add_line(
        session,
        conversation_id=out.conversation_id,
        customer_id=out.customer_id,
        channel=out.channel,
        direction="out",
        author_kind=author_kind,
        author_id=author_id,
        text=out.text,
        meta=meta,
        at=at,
    )


def queued(session: AsyncSession) -> bool:
    """Whether this transaction queued a row: only then is the worker worth waking after it."""
    return bool(session.info.get(QUEUED))


async def addresses_sent(
    session: AsyncSession, channel: str, external_ids: Sequence[str]
) -> list[str]:
    """The addresses kefu sent the messages `external_ids` to (a bounce names them)."""
    return list(
        await session.scalars(
            select(OutboxRow.address).where(
                OutboxRow.channel == channel, OutboxRow.external_id.in_(external_ids)
            )
        )
    )


async def conversation_of_sent(session: AsyncSession, channel: str, external_id: str) -> int | None:
    """The conversation of the row sent as `external_id` on `channel` (a staff reply's target)."""
    return await session.scalar(
        select(OutboxRow.conversation_id)
        .where(
            OutboxRow.channel == channel,
            OutboxRow.external_id == external_id,
            OutboxRow.conversation_id.is_not(None),
        )
        .limit(1)
    )


async def last_open(
    session: AsyncSession,
    channel: str,
    address: str,
    conversation_id: int | None,
    statuses: Sequence[str],
) -> tuple[int, dict[str, Any], str] | None:
    """(id, payload, dedupe key) of the newest unsent row to this place, locked for a change.
    On PostgreSQL a row being claimed right now is skipped, not waited for. (SQLite has one
    writer at a time: the claim cannot interleave.)"""
    place = (
        OutboxRow.conversation_id == conversation_id
        if conversation_id is not None
        else OutboxRow.conversation_id.is_(None)
    )
    query = (
        select(OutboxRow.id, OutboxRow.payload, OutboxRow.dedupe_key)
        .where(
            OutboxRow.channel == channel,
            OutboxRow.address == address,
            place,
            OutboxRow.status.in_(statuses),
        )
        .order_by(OutboxRow.id.desc())
        .limit(1)
    )
    if dialect.is_postgresql(session):
        query = query.with_for_update(skip_locked=True)
    found = (await session.execute(query)).first()
    return None if found is None else (int(found[0]), found[1], found[2])




async def append_to_waiting(
    session: AsyncSession, out: Outbound, text: str, into: Sequence[str], limit: int | None
) -> int | None:
    """Appends `text` to the staff post still waiting for out's place (channel, address,
    conversation) instead of queueing `out`: if that post's dedupe key starts with one of `into`,
    it has no attachments, the channel has not taken it, and the result stays within `limit`
    UTF-16 units (None: any length). Returns the id of the row the text went into, or None
    (queue `out` itself). A post with attachments never takes text, nor is merged: a partly sent
    one (text sent, photo deferred) must not change under the channel's feet."""
    if out.attachments:
        return None
    # Rows still take text while unsent, or claimed but not yet taken for the wire by the channel
    # (the outbox sends a claimed batch in order; a message arriving meanwhile would otherwise
    # wait for the next batch).
    found = await last_open(
        session, out.channel, out.address, out.conversation_id, OUTBOX_UNSENT
    )
    if found is None:
        return None
    row_id, payload, key = found
    if not key.startswith(tuple(into)) or payload.get("attachments") or taken(payload):
        return None
    post = from_payload(payload, address=out.address)
    if not isinstance(post, StaffNotice):
        return None
    merged = f"{post.text}\n{text}"
    if limit is not None and utf16_len(merged) > limit:
        return None
    grown = replace(post, text=merged, merged=post.merged + 1)
    await set_payload(session, row_id, to_payload(grown))
    return row_id


def taken(payload: dict[str, Any]) -> bool:
    """Whether the channel took the post for the wire: its text is final (rows queued before
    intents kept the flag in meta.staff)."""
    legacy = (payload.get("meta") or {}).get("staff") or {}
    return bool(payload.get("taken") or legacy.get("taken"))


async def by_key_locked(session: AsyncSession, key: str) -> tuple[int, dict[str, Any]] | None:
    """(id, payload) of the row a channel knows by `key` (its idempotency key: the dedupe key,
    or "dedupe_key.nonce"), locked on PostgreSQL so a change in progress finishes first."""
    dedupe_key, _, nonce = key.rpartition(".")
    which = OutboxRow.dedupe_key == key
    if dedupe_key:
        which = or_(which, and_(OutboxRow.dedupe_key == dedupe_key, OutboxRow.nonce == nonce))
    query = select(OutboxRow.id, OutboxRow.payload).where(which)
    if dialect.is_postgresql(session):
        query = query.with_for_update()
    found = (await session.execute(query)).first()
    return None if found is None else (int(found[0]), found[1])


async def set_payload(session: AsyncSession, row_id: int, payload: dict[str, Any]) -> None:
    await session.execute(update(OutboxRow).where(OutboxRow.id == row_id).values(payload=payload))


async def depth(session: AsyncSession) -> dict[str, int]:
    """Rows per status, sent aside (they only grow): dead ones wait for a person."""
    rows = await session.execute(
        select(OutboxRow.status, func.count())
        .where(OutboxRow.status.in_((*OUTBOX_UNSENT, "dead")))
        .group_by(OutboxRow.status)
    )
    counts = {"pending": 0, "sending": 0, "deferred": 0, "failed": 0, "dead": 0}
    counts.update({status: n for status, n in rows})
    return counts


async def listing(
    session: AsyncSession, status: str | None, limit: int
) -> list[dict[str, object]]:
    """The newest rows first (of one status, or all), for `kefu outbox list`."""
    query = select(OutboxRow).order_by(OutboxRow.id.desc()).limit(limit)
    if status is not None:
        query = query.where(OutboxRow.status == status)
    return [
        {
            "id": row.id,
            "status": row.status,
            "channel": row.channel,
            "address": row.address,
            "kind": row.payload.get("kind"),
            "conversation_id": row.conversation_id,
            "attempts": row.attempts,
            "last_error": row.last_error,
            "next_attempt_at": row.next_attempt_at,
            "created_at": row.created_at,
            "sent_at": row.sent_at,
            "key": row.dedupe_key,
        }
        for row in await session.scalars(query)
    ]


async def retry_dead(
    session: AsyncSession, ids: Sequence[int] | None, now: datetime
) -> tuple[list[int], dict[int, str]]:
    """Queues dead rows again (the given ids, or every dead row) with a fresh set of attempts
    and the same idempotency key. Returns the ids queued and, for the rest, why not: a row not
    dead, or stopped on purpose (the customer was forgotten; a greeting expired or was
    cancelled after an opt-out), is never sent again."""
    query = select(OutboxRow).where(OutboxRow.status == "dead")
    if ids is not None:
        query = select(OutboxRow).where(OutboxRow.id.in_(list(ids)))
    rows = {row.id: row for row in await session.scalars(query.order_by(OutboxRow.id))}
    refused: dict[int, str] = {}
    for row_id in ids or ():
        if row_id not in rows:
            refused[row_id] = "no such outbox row"
    stopped = set(
        await session.scalars(
            select(CampaignDelivery.outbox_id).where(
                CampaignDelivery.outbox_id.in_(list(rows)),
                CampaignDelivery.status.in_(("expired", "cancelled")),
            )
        )
    )
    queued: list[int] = []
    for row in rows.values():
        if row.status != "dead":
            refused[row.id] = f"it is {row.status}, not dead"
        elif row.payload.get("erased"):
            refused[row.id] = "the customer was forgotten"
        elif row.id in stopped:
            refused[row.id] = f"a greeting stopped on purpose ({row.last_error})"
        else:
            queued.append(row.id)
    for chunk in (queued[n : n + 500] for n in range(0, len(queued), 500)):
        await session.execute(
            update(OutboxRow)
            .where(OutboxRow.id.in_(chunk), OutboxRow.status == "dead")
            .values(
                status="pending",
                attempts=0,
                next_attempt_at=now,
                claimed_until=None,
                claim_token=None,
            )
        )
    if queued:
        session.info[QUEUED] = True
    return queued, refused
