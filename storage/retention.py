"""Retention: sent outbox rows older than [outbox] keep_sent_days are deleted, a small batch per
transaction so the write lock is held for milliseconds, never long enough to stall ingest.

Only rows with status "sent" go: unsent, failed and dead rows stay for the worker and for people
to inspect. A deleted row's dedupe key can never be queued again by kefu (every key is taken once,
by the event that made it: a log row, a survey, a campaign delivery, a breach), and the campaign
delivery that points at a greeting's row keeps the greeting recorded as sent. What goes with it:
email threading by the Message-ID of a reply older than that (the [#id] subject token still
threads it).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update

from storage.db import Database
from storage.models import Acknowledgement, CampaignDelivery, OutboxRow

log = logging.getLogger("kefu.retention")

BATCH = 1000


async def prune(db: Database, now: datetime, *, keep: timedelta, batch: int = BATCH) -> int:
    """Deletes sent rows older than `keep` (and acknowledgement records as old); returns how many
    outbox rows went."""
    cutoff = now - keep
    # next_attempt_at <= sent_at for a sent row: the range is read from the (status,
    # next_attempt_at) index instead of every sent row; sent_at decides.
    old = (
        select(OutboxRow.id)
        .where(
            OutboxRow.status == "sent",
            OutboxRow.next_attempt_at < cutoff,
            OutboxRow.sent_at < cutoff,
        )
        .order_by(OutboxRow.next_attempt_at)
        .limit(batch)
    )
    total = 0
    while True:
        async with db.transaction() as session:
            ids = list(await session.scalars(old))
            if ids:
                await session.execute(
                    update(CampaignDelivery).where(CampaignDelivery.outbox_id.in_(ids)).values(outbox_id=None)
                )
                await session.execute(
                    delete(OutboxRow).where(OutboxRow.id.in_(ids), OutboxRow.status == "sent")
                )
        total += len(ids)
        if len(ids) < batch:
            break
    while True:
        async with db.transaction() as session:
            acks = list(await session.scalars(
                select(Acknowledgement.id).where(Acknowledgement.at < cutoff).limit(batch)
            ))
            if acks:
                await session.execute(delete(Acknowledgement).where(Acknowledgement.id.in_(acks)))
        if len(acks) < batch:
            break
    if total:
        log.info("outbox.retention deleted=%d older_than=%s", total, cutoff.isoformat())
    return total
