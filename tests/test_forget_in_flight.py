"""Forgetting a customer while the outbox worker is sending to them (#12): the send's outcome,
recorded after the erasure, must not write the customer back (the Telegram message key holds their
chat id; a refusal's text can quote their address) nor add a line to their erased log. Run on
SQLite and PostgreSQL with the worker's own storage (storage/deliveries.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.messages import Inbound
from bot.plugins import pipeline as plugged_pipeline
from handlers import agents
from storage import customers
from storage.db import Database
from storage.deliveries import Deliveries
from storage.models import Interaction, OutboxRow
from tests.test_forget import found_anywhere

TG = "6029384756"
WORD = "plumbicorn"
T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)


@pytest.mark.parametrize("outcome", ["sent", "dead"])
async def test_a_send_finishing_after_forget_writes_nothing_back(
    db: Database, db_url: str, tmp_path: Path, outcome: str
) -> None:
    pipeline = plugged_pipeline(db)
    receipt = await pipeline.receive(
        Inbound("telegram", f"{TG}:5", TG, f"{WORD} never came", received_at=T0)
    )
    await pipeline.close()
    assert receipt.conversation_id is not None and receipt.customer_id is not None
    async with db.transaction() as s:
        await agents.answer(s, receipt.conversation_id, "sorry, on its way", agent="amy")
    deliveries = Deliveries(db)
    now = datetime.now(UTC)
    claimed = await deliveries.claim(
        ["telegram"], now, limit=10, lease=timedelta(minutes=5), token="worker-1"
    )
    [row] = claimed.rows  # on the wire now
    async with db.transaction() as s:
        await customers.forget(s, receipt.customer_id)
    await db.scrub()  # as `kefu customers forget` does after its commit
    async with db.sessions() as s:
        lines_before = await s.scalar(select(func.count()).select_from(Interaction))

    if outcome == "sent":
        recorded = await deliveries.finish(row, "sent", now, external_id=f"{TG}:77")
    else:
        recorded = await deliveries.finish(
            row, "dead", now, error=f"Forbidden: bot was blocked by the user {TG} ({WORD})",
            unreachable=True,
        )

    assert not recorded  # the erasure took the row from the worker
    assert await found_anywhere(db, db_url, tmp_path / "mail", (TG, WORD)) == set()
    async with db.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(Interaction)) == lines_before
        erased = await s.get(OutboxRow, row.id)
    assert erased is not None and erased.payload == {"erased": True}
