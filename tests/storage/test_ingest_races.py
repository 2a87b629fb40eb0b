"""The batch write racing a status change made by hand in another connection (#16).

A staff member's `kefu conversations close` (handlers.lifecycle.change) locks the conversation,
not the customer. A batch that read the conversation before that change committed must not write
its own view of the status over it: a closed conversation stays closed and the customer's message
starts a new one, as it would had the close come first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from bot.messages import Inbound
from bot.pipeline import Pipeline
from bot.plugins import pipeline as plugged_pipeline
from handlers import lifecycle
from handlers.roles import SYSTEM
from storage import conversations
from storage.db import Database
from storage.models import Conversation
from tests.handlers.care_helpers import config

CFG = config()


async def _waiting_on_a_lock(db: Database, timeout: float = 20.0) -> None:
    """Until a backend of this database waits on a row lock (the batch, behind the close)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        async with db.sessions() as session:
            waiting = await session.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'"
                )
            )
        if waiting:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the batch never waited on the close's lock")


async def _while_its_line_is_written(
    db: Database,
    pipeline: Pipeline,
    message: Inbound,
    operation: Callable[[AsyncSession], Awaitable[object]],
) -> object:
    """Send `message` through `pipeline`; once its batch has written the log line (not yet
    committed), run `operation` in a transaction on another connection, in a thread, and let the
    batch go on when the operation waits on a lock (or is done). Returns the batch's result or
    exception; the operation's own error fails the test."""
    import threading

    from sqlalchemy import event

    written = threading.Event()
    go = threading.Event()

    def hold(_c: object, _cur: object, statement: str, *_rest: object) -> None:
        if "INSERT INTO interactions" in statement and not written.is_set():
            written.set()
            go.wait(30)

    outcome: dict[str, object] = {}

    def job() -> None:
        async def run() -> None:
            other = Database(db.url)
            try:
                written.wait(30)

                async def operate() -> None:
                    async with other.transaction() as session:
                        await operation(session)

                operating = asyncio.create_task(operate())
                waiting = asyncio.create_task(_waiting_on_a_lock(other))
                await asyncio.wait({operating, waiting}, return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
                go.set()
                await operating
            finally:
                go.set()
                await other.dispose()

        try:
            asyncio.run(run())
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    worker = threading.Thread(target=job)
    worker.start()
    event.listen(db.engine.sync_engine, "after_cursor_execute", hold)
    try:
        [result] = await asyncio.gather(pipeline.receive_many([message]), return_exceptions=True)
    finally:
        event.remove(db.engine.sync_engine, "after_cursor_execute", hold)
        go.set()
        await asyncio.to_thread(worker.join, 60)
        await pipeline.close()
    assert "error" not in outcome, outcome
    return result


@pytest.mark.parametrize("before", ["resolved", "open", "pending"])
async def test_a_close_committed_while_a_batch_waits_is_not_undone(
    db: Database, before: str
) -> None:
    if db.is_sqlite:
        pytest.skip("SQLite has one writer at a time: the batch and the close cannot interleave")
    pipeline = plugged_pipeline(db)
    t0 = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    hello = Inbound(
        channel="webhook", external_id="m1", address="shop:mei", text="你好 🌸",
        display_name="美雪", received_at=t0,
    )
    [first] = await pipeline.receive_many([hello])
    cid = first.conversation_id
    assert cid is not None
    if before != "open":
        async with db.transaction() as session:
            await lifecycle.change(session, cid, before, SYSTEM, CFG, now=t0)
    closing = asyncio.Event()
    release = asyncio.Event()

    async def close() -> None:
        async with db.transaction() as session:
            await lifecycle.close(session, cid, SYSTEM, CFG, now=t0 + timedelta(minutes=1))
            await session.flush()  # the row is written and locked, not committed
            closing.set()
            await release.wait()

    async def message() -> list[object]:
        await closing.wait()
        again = Inbound(
            channel="webhook", external_id="m2", address="shop:mei", text="还在吗？",
            received_at=t0 + timedelta(minutes=2),
        )
        return list(await pipeline.receive_many([again]))

    closer = asyncio.create_task(close())
    sender = asyncio.create_task(message())
    await closing.wait()
    await _waiting_on_a_lock(db)
    release.set()
    await closer
    [receipt] = await sender
    await pipeline.close()
    async with db.sessions() as session:
        closed = await session.get(Conversation, cid)
        assert closed is not None
        assert (closed.status, closed.closed_at) == ("closed", t0 + timedelta(minutes=1))
        line = await session.scalar(
            text("SELECT conversation_id FROM interactions WHERE external_id = 'm2'")
        )
        assert line == receipt.conversation_id != cid  # type: ignore[attr-defined]
        fresh = await session.get(Conversation, line)
        assert fresh is not None and fresh.status == "open"
        n = await session.scalar(
            text("SELECT count(*) FROM conversations WHERE status <> 'closed'")
        )
        assert n == 1
        assert await session.scalar(
            text("SELECT count(*) FROM interactions WHERE external_id IN ('m1', 'm2')")
        ) == 2


@pytest.mark.parametrize("to", ["closed", "resolved", "pending"])
async def test_a_change_by_hand_and_a_batch_of_the_same_customer_do_not_deadlock(
    db: Database, to: str
) -> None:
    # `kefu conversations close` locks the conversation (for_change) and then logs its event line,
    # whose foreign key takes a share lock on the customer; the batch locks the customer and then
    # writes the conversation. Taken in opposite orders, the two deadlocked: PostgreSQL aborted one.
    if db.is_sqlite:
        pytest.skip("SQLite has one writer at a time: the batch and the change cannot interleave")
    pipeline = plugged_pipeline(db)
    t0 = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    hello = Inbound(
        channel="webhook", external_id="m1", address="shop:mei", text="你好 🌸",
        display_name="美雪", received_at=t0,
    )
    [first] = await pipeline.receive_many([hello])
    cid = first.conversation_id
    assert cid is not None
    locked = asyncio.Event()
    release = asyncio.Event()

    async def change() -> None:
        async with db.transaction() as session:
            await conversations.for_change(session, cid)
            locked.set()
            await release.wait()
            await lifecycle.change(session, cid, to, SYSTEM, CFG, now=t0 + timedelta(minutes=1))

    async def message() -> list[object]:
        await locked.wait()
        again = Inbound(
            channel="webhook", external_id="m2", address="shop:mei", text="还在吗？",
            received_at=t0 + timedelta(minutes=2),
        )
        return list(await pipeline.receive_many([again]))

    changer = asyncio.create_task(change())
    sender = asyncio.create_task(message())
    await locked.wait()
    await _waiting_on_a_lock(db)
    release.set()
    results = await asyncio.gather(changer, sender, return_exceptions=True)
    await pipeline.close()
    assert results[0] is None, results[0]
    assert not isinstance(results[1], BaseException), results[1]
    [receipt] = results[1]
    async with db.sessions() as session:
        changed = await session.get(Conversation, cid)
        assert changed is not None
        line = await session.scalar(
            text("SELECT conversation_id FROM interactions WHERE external_id = 'm2'")
        )
        assert line == receipt.conversation_id  # type: ignore[attr-defined]
        assert await session.scalar(
            text("SELECT count(*) FROM interactions WHERE external_id IN ('m1', 'm2')")
        ) == 2
        if to == "closed":  # the change came first: the message starts a new conversation
            assert changed.status == "closed" and line != cid
        else:  # resolved or pending, then the customer's message: open again
            assert changed.status == "open" and line == cid
        assert await session.scalar(
            text("SELECT count(*) FROM conversations WHERE status <> 'closed'")
        ) == 1


async def test_auto_close_does_not_undo_a_reopen_committed_while_it_waits(db: Database) -> None:
    # The auto-close job read the resolved, quiet conversations without a lock and wrote
    # 'closed' by id: a customer's message that reopened one meanwhile (its batch committed
    # while the job waited on the row) was left in a closed conversation nobody reads.
    if db.is_sqlite:
        pytest.skip("SQLite has one writer at a time: the batch and the job cannot interleave")
    import threading

    from sqlalchemy import event

    pipeline = plugged_pipeline(db)
    week = CFG.lifecycle.auto_close_after
    t0 = datetime.now(UTC).replace(microsecond=0) - 2 * week
    hello = Inbound(
        channel="webhook", external_id="m1", address="shop:mei", text="你好 🌸",
        display_name="美雪", received_at=t0,
    )
    [first] = await pipeline.receive_many([hello])
    cid = first.conversation_id
    assert cid is not None
    async with db.transaction() as session:
        await lifecycle.change(session, cid, "resolved", SYSTEM, CFG, now=t0)
    written = threading.Event()
    go = threading.Event()

    def hold(_c: object, _cur: object, statement: str, *_rest: object) -> None:
        if "INSERT INTO interactions" in statement and not written.is_set():
            written.set()  # the batch's lines and reopen are written, not committed
            go.wait(30)

    outcome: dict[str, object] = {}

    def job() -> None:
        async def run() -> None:
            other = Database(db.url)
            try:
                written.wait(30)
                closing = asyncio.create_task(
                    lifecycle.auto_close(other, t0 + week + week / 2, CFG)
                )
                # Until the job waits on the batch's locks, or is done without waiting.
                waiting = asyncio.create_task(_waiting_on_a_lock(other))
                await asyncio.wait({closing, waiting}, return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
                go.set()
                outcome["closed"] = await closing
            finally:
                go.set()
                await other.dispose()

        try:
            asyncio.run(run())
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    worker = threading.Thread(target=job)
    worker.start()
    event.listen(db.engine.sync_engine, "after_cursor_execute", hold)
    try:
        again = Inbound(
            channel="webhook", external_id="m2", address="shop:mei", text="还在吗？",
            received_at=t0 + week,
        )
        [receipt] = await pipeline.receive_many([again])
    finally:
        event.remove(db.engine.sync_engine, "after_cursor_execute", hold)
        go.set()
        await asyncio.to_thread(worker.join, 60)
        await pipeline.close()
    assert "error" not in outcome, outcome
    assert receipt.conversation_id == cid
    assert outcome["closed"] == 0
    async with db.sessions() as session:
        reopened = await session.get(Conversation, cid)
        assert reopened is not None and reopened.status == "open"


async def test_a_customer_forgotten_while_their_message_is_written_keeps_none_of_it(
    db: Database,
) -> None:
    # `kefu customers forget` read the customer's log, erased it, and only then touched the
    # customer row, which the batch writing their new message holds: that message, committed
    # while forget waited, kept their words; or the two deadlocked on the conversation.
    if db.is_sqlite:
        pytest.skip("SQLite has one writer at a time: the batch and forget cannot interleave")
    from storage import customers

    pipeline = plugged_pipeline(db)
    t0 = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    hello = Inbound(
        channel="webhook", external_id="m1", address="shop:mei", text="你好 🌸",
        display_name="美雪", received_at=t0,
    )
    [first] = await pipeline.receive_many([hello])
    async with db.sessions() as session:
        owner = await session.scalar(
            text("SELECT customer_id FROM interactions WHERE external_id = 'm1'")
        )
    again = Inbound(
        channel="webhook", external_id="m2", address="shop:mei", text="我的电话是 13800138000",
        received_at=t0 + timedelta(minutes=2),
    )
    result = await _while_its_line_is_written(
        db, pipeline, again, lambda session: customers.forget(session, owner)
    )
    assert not isinstance(result, BaseException), result
    assert first.conversation_id is not None
    async with db.sessions() as session:
        words = list(await session.scalars(text("SELECT text FROM interactions")))
        assert not [w for w in words if "13800138000" in (w or "") or "你好" in (w or "")], words


@pytest.mark.parametrize("theirs", ["open", "closed"])
async def test_a_merge_while_the_gone_customers_message_is_written_moves_it_too(
    db: Database, theirs: str
) -> None:
    # `kefu customers merge` moved the gone record's identities, conversations and log lines,
    # then wrote the gone customer row, which the batch writing their message holds: that
    # message (committed while merge waited) stayed with the merged-away record.
    if db.is_sqlite:
        pytest.skip("SQLite has one writer at a time: the batch and merge cannot interleave")
    from storage import customers

    pipeline = plugged_pipeline(db)
    t0 = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    await pipeline.receive_many([
        Inbound(channel="webhook", external_id="m1", address="shop:mei", text="你好",
                display_name="美雪", received_at=t0),
        Inbound(channel="telegram", external_id="t1", address="4242", text="こんにちは 🍣",
                display_name="美雪", received_at=t0),
    ])
    async with db.sessions() as session:
        keep, gone = [
            await session.scalar(
                text(f"SELECT customer_id FROM interactions WHERE external_id = '{key}'")
            )
            for key in ("m1", "t1")
        ]
    assert keep != gone
    if theirs == "closed":  # the message then starts a new conversation
        async with db.transaction() as session:
            [conversation] = await conversations.of_customer(session, gone)
            await lifecycle.close(session, conversation.id, SYSTEM, CFG, now=t0)
    again = Inbound(channel="telegram", external_id="t2", address="4242", text="まだですか？",
                    received_at=t0 + timedelta(minutes=2))
    result = await _while_its_line_is_written(
        db, pipeline, again, lambda session: customers.merge(session, keep, gone)
    )
    assert not isinstance(result, BaseException), result
    async with db.sessions() as session:
        owners = set(await session.scalars(text("SELECT customer_id FROM interactions")))
        assert owners == {keep}
        owners = set(await session.scalars(text("SELECT customer_id FROM conversations")))
        assert owners == {keep}


@pytest.mark.parametrize("how", ["merge", "forget"])
async def test_a_sender_merged_or_forgotten_while_the_batch_waits_is_read_as_they_are_now(
    db: Database, how: str
) -> None:
    # The senders' statement waits for a customer's lock; a merge (identities moved) or a forget
    # (identities deleted) committed meanwhile. The lock brings the customer as they are now,
    # the identity as it was: the batch wrote the message to the merged-away or erased record.
    if db.is_sqlite:
        pytest.skip("SQLite has one writer at a time: the batch and merge cannot interleave")
    from storage import customers, ingest

    mail = Inbound(channel="webhook", external_id="m1", address="shop:mei", text="hi")
    chat = Inbound(channel="telegram", external_id="t1", address="4242", text="hi")
    async with db.transaction() as session:
        owner, _, _ = await ingest.identify(session, [mail, chat])
    keep, gone = owner[("webhook", "shop:mei")], owner[("telegram", "4242")]
    other = Database(db.url)
    try:
        async with other.transaction() as session:
            if how == "merge":
                await customers.merge(session, keep, gone)
            else:
                await customers.forget(session, gone)
            await session.flush()

            async def batch() -> tuple[dict[tuple[str, str], int], bool]:
                async with db.transaction() as s:
                    found, rows, _ = await ingest.identify(s, [chat])
                    cid = found[("telegram", "4242")]
                    return found, rows[cid].merged_into is None and rows[cid].forgotten_at is None

            task = asyncio.create_task(batch())
            await _waiting_on_a_lock(db)
        found, live = await task
    finally:
        await other.dispose()
    assert live
    if how == "merge":
        assert found == {("telegram", "4242"): keep}
    else:
        assert found[("telegram", "4242")] not in (keep, gone)
