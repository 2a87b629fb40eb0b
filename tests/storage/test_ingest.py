"""The pipeline's batch write (storage/ingest.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError

from bot.messages import Inbound
from storage import ingest
from storage.db import Database
from storage.models import Conversation, Customer, Identity
from tests.servers.postgres import PostgresServer


def first_contacts(n: int, start: int = 0, channel: str = "webhook") -> list[Inbound]:
    return [
        Inbound(
            channel=channel,
            external_id=f"m{i}",
            address=f"shop:u{i}",
            text="hello",
            display_name=f"name {i}",
            language="zh" if i % 3 else "en",
        )
        for i in range(start, start + n)
    ]


async def stored(db: Database) -> dict[tuple[str, str], tuple[int, str | None, str | None]]:
    async with db.sessions() as session:
        rows = await session.execute(
            select(
                Identity.channel,
                Identity.address,
                Customer.id,
                Customer.display_name,
                Customer.language,
            ).join(Customer, Customer.id == Identity.customer_id)
        )
        return {(ch, a): (cid, name, lang) for ch, a, cid, name, lang in rows}


async def test_each_first_contact_gets_its_own_customer_with_its_name(db: Database) -> None:
    # PostgreSQL writes a batch's customers and identities in one statement that pairs them by
    # the order of the new ids: every address must end with the name and language it came with.
    inbounds = first_contacts(57)
    async with db.transaction() as session:
        owner, customers, senders = await ingest.identify(session, inbounds)
        assert senders.known == frozenset()
        assert await ingest.live_conversations(session, senders) == {}
    rows = await stored(db)
    assert len(rows) == 57 and len({cid for cid, _, _ in rows.values()}) == 57
    for i, inbound in enumerate(inbounds):
        cid, name, language = rows[("webhook", inbound.address)]
        assert (name, language) == (f"name {i}", "zh" if i % 3 else "en")
        assert owner[("webhook", inbound.address)] == cid
        assert customers[cid].display_name == name  # the session's object is the row
        assert customers[cid].id == cid


async def test_a_batch_of_known_and_new_senders(db: Database) -> None:
    async with db.transaction() as session:
        first, _, _ = await ingest.identify(session, first_contacts(5))
        for cid in list(first.values())[:2]:
            session.add(Conversation(customer_id=cid))
    # Two channels in one batch too: on PostgreSQL all locked by the one statement that reads them.
    batch = first_contacts(10) + first_contacts(2, channel="telegram")
    async with db.transaction() as session:
        owner, customers, senders = await ingest.identify(session, batch)
        assert senders.known == frozenset(first.values())
        live = await ingest.live_conversations(session, senders)
        assert set(live) == set(list(first.values())[:2])
        # the customers created in an earlier batch are the same rows, not new ones
        for key, cid in first.items():
            assert owner[key] == cid
        customers[owner[("webhook", "shop:u7")]].display_name = "changed"  # still tracked
    rows = await stored(db)
    assert len(rows) == 12 and rows[("webhook", "shop:u7")][1] == "changed"


@pytest.mark.postgres
async def test_two_writers_creating_one_customer_one_loses_on_the_unique_key(
    postgres: PostgresServer,
) -> None:
    db = Database(postgres.create_database())
    await db.upgrade()
    try:
        inbounds = first_contacts(3)
        started = asyncio.Event()

        async def holder() -> None:
            async with db.transaction() as session:
                await ingest.identify(session, inbounds)
                started.set()
                await asyncio.sleep(0.5)

        async def second() -> None:
            await started.wait()
            async with db.transaction() as session:
                await ingest.identify(session, inbounds[1:])

        results = await asyncio.gather(holder(), second(), return_exceptions=True)
        assert results[0] is None
        assert isinstance(results[1], IntegrityError)  # the pipeline retries: then it finds them
        assert len(await stored(db)) == 3
    finally:
        await db.dispose()


async def test_every_statement_of_a_batch_is_compiled_once(db: Database) -> None:
    # Compiling a statement costs more than running it (#16): a statement SQLAlchemy cannot cache
    # (a multi-row VALUES is one) is compiled again for every batch. A second batch of the same
    # shape, other senders and messages, must run every statement from the compiled cache.
    from bot.plugins import pipeline as plugged_pipeline

    seen: list[tuple[str, object]] = []

    @event.listens_for(db.engine.sync_engine, "after_cursor_execute")
    def record(_c: Any, _cur: Any, statement: str, _p: Any, context: Any, _many: bool) -> None:
        if context.compiled is not None:  # plain SQL strings (BEGIN IMMEDIATE) are not compiled
            seen.append((statement.split("(")[0][:60], context.cache_hit))

    pipeline = plugged_pipeline(db)

    def batch(start: int) -> list[Inbound]:
        known = [replace(i, external_id=f"again{i.external_id}") for i in first_contacts(4)]
        return [*first_contacts(6, start=start), *known]

    await pipeline.receive_many(first_contacts(4))
    await pipeline.receive_many(batch(100))
    seen.clear()
    await pipeline.receive_many(batch(200))
    assert seen, "no statement recorded"
    uncached = [s for s, hit in seen if hit is not context_cache_hit()]
    assert uncached == [], uncached


def context_cache_hit() -> object:
    from sqlalchemy.engine.interfaces import CacheStats

    return CacheStats.CACHE_HIT


async def test_add_rows_returns_each_rows_id_and_stores_it_as_given(db: Database) -> None:
    # PostgreSQL writes the rows as one statement over arrays: each id must be its own row's,
    # a JSON value (a list, a dict, a string with quotes, null) must come back as it went in,
    # and a column a row leaves out gets the model's default, as an executemany would give it.
    from datetime import UTC, datetime

    from storage.models import Interaction

    async with db.transaction() as session:
        _, customers, _ = await ingest.identify(session, first_contacts(1))
        cid = next(iter(customers))
    at = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    metas: list[Any] = [{"a": [1, {"b": None}]}, {}, {"q": 'say "hi"\\n'}, {"n": None}]
    rows: list[dict[str, object]] = [
        {
            "customer_id": cid,
            "channel": "webhook",
            "direction": "in",
            "author_kind": "customer",
            "text": f"text {i}",
            "external_id": f"x{i}",
            "meta": meta,
            "created_at": at,
            "attachments": [{"name": f"f{i}.txt"}],
        }
        for i, meta in enumerate(metas * 5)
    ]
    for row in rows[10:]:
        del row["attachments"]  # (an executemany takes its columns from the first row)
    async with db.transaction() as session:
        ids = await ingest.add_rows(session, Interaction, rows[:10])
        ids += await ingest.add_rows(session, Interaction, rows[10:])
    assert len(set(ids)) == len(rows)
    async with db.sessions() as session:
        found = {i.id: i for i in await session.scalars(select(Interaction))}
    for i, (row_id, row) in enumerate(zip(ids, rows, strict=True)):
        stored_row = found[row_id]
        assert (stored_row.external_id, stored_row.text) == (f"x{i}", f"text {i}")
        assert stored_row.meta == row["meta"]
        assert stored_row.attachments == ([{"name": f"f{i}.txt"}] if i < 10 else [])
        assert stored_row.created_at == at and stored_row.conversation_id is None


@pytest.mark.postgres
@pytest.mark.parametrize("plans", ["force_custom_plan", "force_generic_plan"])
async def test_a_batchs_key_reads_probe_the_unique_indexes_of_a_young_database(
    postgres: PostgresServer, plans: str
) -> None:
    # A fresh deployment's tables hold a few thousand rows, all cached: with a key list the
    # planner chose a sequential scan that compares every row with every key (2-2.5 ms per batch
    # read in bench/ingest.py, #16). The dedupe read and the senders' read must probe the unique
    # indexes, with the plan of a prepared statement's first runs and with its cached one.
    from sqlalchemy import text

    db = Database(postgres.create_database())
    await db.upgrade()
    try:
        async with db.transaction() as session:
            for sql in (
                "INSERT INTO customers (display_name, tags, vip, marketing_consent, created_at) "
                "SELECT 'c' || i, '[]', false, false, now() FROM generate_series(1, 3000) i",
                "INSERT INTO identities (customer_id, channel, address, reachable, created_at) "
                "SELECT id, 'webhook', 'shop:u' || id, true, now() FROM customers",
                "INSERT INTO interactions (customer_id, channel, direction, author_kind, text, "
                "attachments, external_id, meta, created_at) SELECT id, 'webhook', 'in', "
                "'customer', 'hello', '[]', 'm' || id, '{}', now() FROM customers",
            ):
                await session.execute(text(sql))
        async with db.engine.connect() as conn:
            await conn.execute(text("ANALYZE"))
            await conn.commit()
        sent: list[tuple[str, Any]] = []

        @event.listens_for(db.engine.sync_engine, "before_cursor_execute")
        def record(_c: Any, _cur: Any, statement: str, params: Any, *_rest: Any) -> None:
            if statement.lstrip().startswith(("SELECT", "WITH k AS")):  # the senders' read
                sent.append((statement, params))

        batch = [*first_contacts(16, start=100), *first_contacts(16, start=5000)]
        async with db.transaction() as session:
            await ingest.logged(session, "webhook", [i.external_id for i in batch])
            await ingest.identify(session, batch)
        event.remove(db.engine.sync_engine, "before_cursor_execute", record)
        assert len(sent) == 2, sent
        async with db.engine.connect() as conn:
            await conn.exec_driver_sql(f"SET plan_cache_mode = {plans}")
            for statement, params in sent:
                plan = "\n".join(
                    row[0] for row in await conn.exec_driver_sql("EXPLAIN " + statement, params)
                )
                # (the staff the dedupe read brings along are read whole: a few rows)
                for table in ("interactions", "identities", "customers"):
                    assert f"Seq Scan on {table}" not in plan, plan
    finally:
        await db.dispose()


async def test_a_batchs_conversation_changes_go_with_its_log_lines(db: Database) -> None:
    # PostgreSQL (#16): the conversations a batch changed (new ones: reply address, due times;
    # known ones: the last update) are written by the statement that logs the lines, not by an
    # UPDATE per conversation at the flush. What is stored is the same on both databases.
    from datetime import UTC, datetime, timedelta

    from bot.plugins import pipeline as plugged_pipeline

    pipeline = plugged_pipeline(db)
    t0 = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)  # after the rows' creation
    first = [replace(i, received_at=t0) for i in first_contacts(3)]
    await pipeline.receive_many(first)
    sent: list[str] = []

    @event.listens_for(db.engine.sync_engine, "before_cursor_execute")
    def record(_c: Any, _cur: Any, statement: str, *_rest: Any) -> None:
        sent.append(" ".join(statement.split())[:40])

    later = t0 + timedelta(minutes=5)
    batch = [
        replace(i, external_id=f"again-{i.external_id}", received_at=later) for i in first
    ] + [replace(i, received_at=later) for i in first_contacts(2, start=10)]
    receipts = await pipeline.receive_many(batch)
    event.remove(db.engine.sync_engine, "before_cursor_execute", record)
    await pipeline.close()
    if not db.is_sqlite:
        assert not [s for s in sent if s.startswith("UPDATE conversations")], sent
    async with db.sessions() as session:
        for inbound, receipt in zip(batch, receipts, strict=True):
            conversation = await session.get(Conversation, receipt.conversation_id)
            assert conversation is not None
            assert conversation.updated_at == later
            assert (conversation.reply_channel, conversation.reply_address) == (
                inbound.channel,
                inbound.address,
            )
            assert conversation.first_response_due_at is not None
            assert conversation.sla_due_at == conversation.first_response_due_at
    assert len({r.conversation_id for r in receipts}) == 5


async def test_known_and_new_senders_of_several_channels_cost_one_statement(db: Database) -> None:
    # PostgreSQL (#16): the senders' read, the first contacts' customers and identities and the
    # known senders' locks are one round trip (were a read per channel, an INSERT, and for
    # several channels a lock statement). Each sender ends with its own customer on both.
    async with db.transaction() as session:
        first, _, _ = await ingest.identify(session, first_contacts(4))
    batch = first_contacts(8) + first_contacts(3, channel="telegram")
    sent: list[str] = []

    @event.listens_for(db.engine.sync_engine, "before_cursor_execute")
    def record(_c: Any, _cur: Any, statement: str, *_rest: Any) -> None:
        sent.append(" ".join(statement.split())[:50])

    async with db.transaction() as session:
        owner, customers, senders = await ingest.identify(session, batch)
        await ingest.live_conversations(session, senders)
    event.remove(db.engine.sync_engine, "before_cursor_execute", record)
    assert senders.known == frozenset(first.values())
    assert {key: owner[key] for key in first} == first
    assert len(set(owner.values())) == 11 and set(customers) == set(owner.values())
    rows = await stored(db)
    for inbound in batch:
        cid, name, _ = rows[(inbound.channel, inbound.address)]
        assert owner[(inbound.channel, inbound.address)] == cid
        assert customers[cid].display_name == name == inbound.display_name
    if not db.is_sqlite:
        # the senders' statement, then the known senders' live conversations
        assert len(sent) == 2, sent


async def test_first_contacts_conversations_are_written_with_the_log_lines(db: Database) -> None:
    # PostgreSQL (#16): a new customer's conversation takes an id drawn by the senders' statement
    # and is written with the batch's log lines, in its final state: no INSERT of its own. A known
    # customer whose conversation is closed still opens one the ordinary way, in the same batch.
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from bot.plugins import pipeline as plugged_pipeline

    pipeline = plugged_pipeline(db)
    t0 = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    [known] = await pipeline.receive_many([replace(first_contacts(1)[0], received_at=t0)])
    async with db.transaction() as session:
        await session.execute(
            update(Conversation)
            .where(Conversation.id == known.conversation_id)
            .values(status="closed")
        )
    sent: list[tuple[str, Any]] = []

    @event.listens_for(db.engine.sync_engine, "before_cursor_execute")
    def record(_c: Any, _cur: Any, statement: str, params: Any, *_rest: Any) -> None:
        sent.append((" ".join(statement.split()), params))

    later = t0 + timedelta(minutes=1)
    events = [replace(first_contacts(1, start=20)[0], kind="event", external_id="ev")]
    batch = [
        replace(first_contacts(1)[0], external_id="again", received_at=later),
        *[replace(i, received_at=later) for i in first_contacts(3, start=10)],
        replace(first_contacts(1, start=10)[0], external_id="more", received_at=later),
        *events,
    ]
    receipts = await pipeline.receive_many(batch)
    event.remove(db.engine.sync_engine, "before_cursor_execute", record)
    await pipeline.close()
    own = [p for s, p in sent if "INSERT INTO conversations" in s and "interactions" not in s]
    if not db.is_sqlite:
        assert [len(params[0]) for params in own] == [1]  # the known customer's only
    assert receipts[0].conversation_id != known.conversation_id
    assert receipts[4].conversation_id == receipts[1].conversation_id  # the same customer's
    assert receipts[5].conversation_id is None  # an event opens nothing
    async with db.sessions() as session:
        for inbound, receipt in zip(batch[:5], receipts[:5], strict=True):
            conversation = await session.get(Conversation, receipt.conversation_id)
            assert conversation is not None
            assert conversation.customer_id == receipt.customer_id
            assert (conversation.status, conversation.priority) == ("open", "normal")
            assert conversation.updated_at == later
            assert conversation.reply_address == inbound.address
            assert conversation.first_response_due_at is not None
    assert len({r.conversation_id for r in receipts[:4]}) == 4
