"""More than one batch transaction in flight per process (PostgreSQL): a batch waiting on the
database does not hold up the next one, and one sender's messages still keep their order and
their effects. On SQLite (one writer) one batch is in flight, as before.

Overlap is shown with a real row lock held by another connection, not with a pause: the first
batch is seen waiting on the lock in pg_locks, and the second one commits while it still waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from bot.effects import Acknowledged, Logged
from bot.lookup import Lookup
from bot.messages import Inbound
from bot.plugins import pipeline as plugged_pipeline
from storage.db import Database
from storage.models import Acknowledgement, Conversation, Customer, Interaction
from tests.servers.postgres import PostgresServer

# Long enough for a loaded machine; only reached when the behaviour under test is missing.
PATIENCE = 20.0


def msg(n: int, user: str, text: str = "hello") -> Inbound:
    return Inbound(channel="webhook", external_id=f"shop:{n}", address=f"shop:{user}", text=text)


@asynccontextmanager
async def customer_locked(url: str, customer_id: int) -> AsyncIterator[AsyncConnection]:
    """Another connection (another process, an agent's long transaction) holds the customer's
    row lock until the block ends."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn, conn.begin():
            await conn.execute(
                select(Customer.id).where(Customer.id == customer_id).with_for_update()
            )
            yield conn
    finally:
        await engine.dispose()


async def until_waiting_on_a_lock(db: Database) -> None:
    """Returns once some transaction waits for a row lock (pg_locks: not granted)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PATIENCE
    while loop.time() < deadline:
        async with db.sessions() as s:
            if await s.scalar(text("SELECT count(*) FROM pg_locks WHERE NOT granted")):
                return
        await asyncio.sleep(0.01)
    raise AssertionError("no transaction ever waited on the lock")


async def first_contact(db: Database, user: str, n: int) -> tuple[int, int]:
    """(customer id, conversation id) of a new customer's first message."""
    pipeline = plugged_pipeline(db)
    try:
        receipt = await pipeline.receive(msg(n, user))
    finally:
        await pipeline.close()
    assert receipt.customer_id is not None and receipt.conversation_id is not None
    return receipt.customer_id, receipt.conversation_id


@pytest.fixture
async def pg(postgres: PostgresServer) -> AsyncIterator[Database]:
    db = Database(postgres.create_database())
    await db.upgrade()
    try:
        yield db
    finally:
        await db.dispose()


@pytest.mark.postgres
async def test_a_second_batch_commits_while_the_first_waits_on_a_row_lock(pg: Database) -> None:
    x, _ = await first_contact(pg, "x", 1)
    pipeline = plugged_pipeline(pg)
    async with customer_locked(pg.url.render_as_string(hide_password=False), x):
        blocked = asyncio.create_task(pipeline.receive(msg(2, "x")))
        await until_waiting_on_a_lock(pg)
        # Another customer's message is stored while the first batch still waits.
        y = await asyncio.wait_for(pipeline.receive(msg(3, "y")), PATIENCE)
        assert y.status == "accepted"
        async with pg.sessions() as s:
            assert await s.get(Interaction, y.interaction_id) is not None  # committed
        assert not blocked.done()
    receipt = await asyncio.wait_for(blocked, PATIENCE)
    assert receipt.status == "accepted" and receipt.customer_id == x
    await pipeline.close()


class AcknowledgeOnce:
    """An observer as acknowledgements work: the first message of a conversation is answered
    once (the Acknowledgement row), later ones are not."""

    async def __call__(self, lookup: Lookup, note: Logged) -> list[Acknowledged]:
        conversation = note.conversation
        if conversation is None or not note.new_conversation:
            return []
        return [
            Acknowledged(
                conversation.id,
                note.inbound.channel,
                note.inbound.address,
                note.inbound.received_at,
            )
        ]


@pytest.mark.postgres
async def test_one_senders_messages_keep_their_order_with_two_batches_in_flight(
    pg: Database,
) -> None:
    """X's first message waits in a batch blocked on another customer's lock (Z, locked first:
    customers are locked in id order); X's next messages, sent meanwhile, must not overtake it
    in another batch: they are logged after it, in the order sent, in one conversation with one
    acknowledgement."""
    z, _ = await first_contact(pg, "z", 1)
    x, x_conversation = await first_contact(pg, "x", 2)
    assert z < x
    async with pg.transaction() as s:  # X's conversation is over: the next message opens one
        conversation = await s.get(Conversation, x_conversation)
        assert conversation is not None
        conversation.status = "closed"
    pipeline = plugged_pipeline(pg, observers=[AcknowledgeOnce()])
    async with customer_locked(pg.url.render_as_string(hide_password=False), z):
        # One batch: Z's message and X's first (both queued before the writer runs).
        held = [
            asyncio.create_task(pipeline.receive(msg(10, "z"))),
            asyncio.create_task(pipeline.receive(msg(11, "x", "first"))),
        ]
        await until_waiting_on_a_lock(pg)
        later = [
            asyncio.create_task(pipeline.receive(msg(12 + n, "x", f"then {n}"))) for n in range(3)
        ]
        # Another sender's message is not held up by X's or Z's.
        w = await asyncio.wait_for(pipeline.receive(msg(20, "w")), PATIENCE)
        assert w.status == "accepted"
        assert not any(t.done() for t in held)
    receipts = await asyncio.wait_for(asyncio.gather(*held, *later), PATIENCE)
    assert {r.status for r in receipts} == {"accepted"}
    async with pg.sessions() as s:
        texts = list(
            await s.scalars(
                select(Interaction.text)
                .where(Interaction.customer_id == x, Interaction.direction == "in")
                .order_by(Interaction.id)
            )
        )
        conversations = {r.conversation_id for r in receipts[1:]}
        acknowledged = await s.scalar(
            select(func.count())
            .select_from(Acknowledgement)
            .where(Acknowledgement.conversation_id.in_(conversations))
        )
    assert texts == ["hello", "first", "then 0", "then 1", "then 2"]
    assert len(conversations) == 1 and x_conversation not in conversations
    assert acknowledged == 1
    await pipeline.close()


async def test_sqlite_keeps_one_batch_in_flight(tmp_path: object) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/kefu.db")
    await db.upgrade()
    pipeline = plugged_pipeline(db)
    assert pipeline.in_flight == 1
    receipts = await asyncio.gather(*(pipeline.receive(msg(n, f"u{n % 3}")) for n in range(30)))
    assert {r.status for r in receipts} == {"accepted"}
    await pipeline.close()
    await db.dispose()
