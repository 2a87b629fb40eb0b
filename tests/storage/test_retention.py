"""[outbox] keep_sent_days: old sent rows are deleted in small batches; nothing unsent, nothing
recent, and nothing another row still points at is lost."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from bot.config import parse_config
from bot.scheduler import retention_jobs
from storage import retention
from storage.db import Database
from storage.models import Acknowledgement, CampaignDelivery, Conversation, Customer, OutboxRow

NOW = datetime(2027, 6, 1, tzinfo=UTC)


def row(n: int, status: str, age_days: float) -> OutboxRow:
    at = NOW - timedelta(days=age_days)
    return OutboxRow(
        channel="webhook",
        address="shop:u1",
        payload={"text": f"m{n}"},
        dedupe_key=f"k{n}",
        status=status,
        next_attempt_at=at,
        created_at=at,
        sent_at=at if status == "sent" else None,
    )


async def test_old_sent_rows_go_the_rest_stays(db: Database) -> None:
    async with db.transaction() as s:
        customer = Customer(tags=[])
        s.add(customer)
        await s.flush()
        conversation = Conversation(customer_id=customer.id)
        s.add(conversation)
        rows = [
            row(1, "sent", 100),
            row(2, "sent", 91),
            row(3, "sent", 89),
            row(4, "pending", 200),
            row(5, "dead", 200),
            row(6, "failed", 200),
            *(row(10 + n, "sent", 120) for n in range(25)),
        ]
        s.add_all(rows)
        await s.flush()
        s.add(
            CampaignDelivery(
                campaign="birthday", occasion="2027", customer_id=customer.id, outbox_id=rows[0].id
            )
        )
        s.add(
            Acknowledgement(
                conversation_id=conversation.id,
                channel="webhook",
                address="shop:u1",
                at=NOW - timedelta(days=100),
            )
        )
        s.add(
            Acknowledgement(
                conversation_id=conversation.id,
                channel="webhook",
                address="shop:u1",
                at=NOW - timedelta(hours=1),
            )
        )
    deleted = await retention.prune(db, NOW, keep=timedelta(days=90), batch=10)
    assert deleted == 27
    async with db.sessions() as s:
        left = set(await s.scalars(select(OutboxRow.dedupe_key)))
        delivery = await s.scalar(select(CampaignDelivery))
        acks = await s.scalar(select(func.count()).select_from(Acknowledgement))
    assert left == {"k3", "k4", "k5", "k6"}
    # The greeting stays recorded as sent (its key keeps it from going out twice), without its row.
    assert delivery is not None and delivery.outbox_id is None
    assert acks == 1
    assert await retention.prune(db, NOW, keep=timedelta(days=90)) == 0


def test_the_job_is_scheduled_from_config() -> None:
    [(job_id, _, every)] = retention_jobs(parse_config({"outbox": {"keep_sent_days": 30}}), db=None)  # type: ignore[arg-type]
    assert job_id == "outbox.retention" and every == 3600
    assert retention_jobs(parse_config({"outbox": {"keep_sent_days": 0}}), db=None) == []  # type: ignore[arg-type]
    assert parse_config({}).outbox.keep_sent_days == 90
