"""The pipeline on both databases: dedupe, identify, thread, log, in one transaction."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from bot.effects import Logged
from bot.messages import Attachment, Inbound
from bot.plugins import pipeline as plugged_pipeline
from storage.db import Database
from storage.models import Conversation, Customer, Identity, Interaction, OutboxRow


def msg(n: int | str, user: str = "u1", text: str = "hello", **kw: object) -> Inbound:
    return Inbound(
        channel="webhook", external_id=f"shop:{n}", address=f"shop:{user}", text=text, **kw
    )  # type: ignore[arg-type]


async def count(db: Database, model: type) -> int:
    async with db.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


async def test_first_contact_creates_customer_identity_conversation(db: Database) -> None:
    pipeline = plugged_pipeline(db)
    receipt = await pipeline.receive(msg(1, display_name="张三", language="zh"))
    assert receipt.status == "accepted"
    async with db.sessions() as s:
        customer = await s.get(Customer, receipt.customer_id)
        identity = await s.scalar(select(Identity))
        conversation = await s.get(Conversation, receipt.conversation_id)
        row = await s.get(Interaction, receipt.interaction_id)
    assert customer is not None and customer.display_name == "张三" and customer.language == "zh"
    assert identity is not None and (identity.channel, identity.address) == ("webhook", "shop:u1")
    assert conversation is not None and conversation.status == "open"
    assert conversation.reply_channel == "webhook" and conversation.reply_address == "shop:u1"
    assert row is not None and (row.direction, row.author_kind, row.text) == (
        "in",
        "customer",
        "hello",
    )
    await pipeline.close()


async def test_same_user_same_customer_and_conversation(db: Database) -> None:
    pipeline = plugged_pipeline(db)
    a = await pipeline.receive(msg(1))
    b = await pipeline.receive(msg(2))
    c = await pipeline.receive(msg(3, user="u2"))
    assert a.customer_id == b.customer_id != c.customer_id
    assert a.conversation_id == b.conversation_id != c.conversation_id
    assert await count(db, Customer) == 2
    await pipeline.close()


async def test_duplicate_is_logged_once_and_answers_with_the_original(db: Database) -> None:
    pipeline = plugged_pipeline(db)
    first = await pipeline.receive(msg(1))
    again = await pipeline.receive(msg(1, text="changed in transit"))
    assert again.status == "duplicate" and again.interaction_id == first.interaction_id
    assert await count(db, Interaction) == 1
    await pipeline.close()


async def test_concurrent_copies_in_one_batch_log_once(db: Database) -> None:
    pipeline = plugged_pipeline(db)
    receipts = await asyncio.gather(*(pipeline.receive(msg(7)) for _ in range(50)))
    assert sorted(r.status for r in receipts).count("accepted") == 1
    assert len({r.interaction_id for r in receipts}) == 1
    assert await count(db, Interaction) == 1
    await pipeline.close()


async def test_a_bad_message_does_not_sink_its_batch(db: Database) -> None:
    def classify(text: str, language: str | None):
        if text == "boom":
            raise RuntimeError("classifier crashed")
        from handlers.complaints import NOT_A_COMPLAINT

        return NOT_A_COMPLAINT

    pipeline = plugged_pipeline(db, classify=classify)
    results = await asyncio.gather(
        *(
            pipeline.receive(msg(n, user=f"u{n}", text="boom" if n == 3 else "ok"))
            for n in range(6)
        ),
        return_exceptions=True,
    )
    failed = [r for r in results if isinstance(r, Exception)]
    assert len(failed) == 1 and "classifier crashed" in str(failed[0])
    # Nothing of the failed message is half-written: no interaction, no customer, no identity.
    assert await count(db, Interaction) == 5
    assert await count(db, Customer) == 5
    assert await count(db, Identity) == 5
    await pipeline.close()


async def test_observer_failure_rolls_back_the_message(db: Database) -> None:
    async def observer(session: object, logged: Logged) -> None:
        raise ValueError("staff notification failed")

    pipeline = plugged_pipeline(db, observers=[observer])
    try:
        await pipeline.receive(msg(1))
    except ValueError:
        pass
    else:
        raise AssertionError("the observer's error must reach the caller")
    assert await count(db, Interaction) == 0
    assert await count(db, Customer) == 0
    await pipeline.close()


async def test_observer_enqueues_in_the_same_transaction(db: Database) -> None:
    from bot.effects import Post
    from bot.intents import Acknowledgement, Outbound

    async def ack(reads: object, logged: Logged) -> list[Post]:
        return [
            Post(
                Outbound(
                    "webhook",
                    logged.inbound.address,
                    Acknowledgement(
                        text="got it",
                        conversation_id=logged.conversation.id if logged.conversation else None,
                    ),
                    f"ack-{logged.interaction_id}",
                )
            )
        ]

    pipeline = plugged_pipeline(db, observers=[ack])
    receipt = await pipeline.receive(msg(1))
    async with db.sessions() as s:
        row = await s.scalar(select(OutboxRow))
    assert row is not None and row.dedupe_key == f"ack-{receipt.interaction_id}"
    assert row.conversation_id == receipt.conversation_id
    await pipeline.close()


async def test_attachments_and_explicit_complaint(db: Database) -> None:
    pipeline = plugged_pipeline(db)
    receipt = await pipeline.receive(
        msg(1, kind="complaint", attachments=(Attachment(url="https://x/y.png", name="y.png"),))
    )
    async with db.sessions() as s:
        row = await s.get(Interaction, receipt.interaction_id)
        conversation = await s.get(Conversation, receipt.conversation_id)
    assert row is not None and row.attachments == [
        {"kind": "file", "url": "https://x/y.png", "name": "y.png"}
    ]
    assert row.meta["complaint"]["reasons"] == ["explicit: webhook marked it a complaint"]
    assert (
        conversation is not None and conversation.is_complaint and conversation.priority == "high"
    )
    await pipeline.close()


async def test_events_are_logged_without_opening_a_conversation(db: Database) -> None:
    pipeline = plugged_pipeline(db)
    receipt = await pipeline.receive(msg(1, kind="event", text="auto-reply: out of office"))
    assert receipt.conversation_id is None
    async with db.sessions() as s:
        row = await s.get(Interaction, receipt.interaction_id)
    assert row is not None and row.direction == "event" and row.meta["kind"] == "event"
    assert await count(db, Conversation) == 0
    await pipeline.close()


async def test_threading_hints_and_reopen(db: Database) -> None:
    pipeline = plugged_pipeline(db)
    first = await pipeline.receive(msg(1))
    async with db.transaction() as s:
        conversation = await s.get(Conversation, first.conversation_id)
        assert conversation is not None
        conversation.status = "resolved"
        conversation.resolved_at = datetime.now(UTC)
    # A reply naming the first message threads into that conversation and reopens it.
    reply = await pipeline.receive(msg(2, reply_to=("shop:1",)))
    assert reply.conversation_id == first.conversation_id
    async with db.sessions() as s:
        conversation = await s.get(Conversation, first.conversation_id)
        events = list(
            await s.scalars(select(Interaction.meta).where(Interaction.direction == "event"))
        )
    assert (
        conversation is not None
        and conversation.status == "open"
        and conversation.resolved_at is None
    )
    assert events == [{"kind": "reopened"}]
    # A hint to somebody else's conversation is ignored.
    other = await pipeline.receive(msg(3, user="u2", conversation_hint=first.conversation_id))
    assert other.conversation_id != first.conversation_id
    # Closed is final: the next message starts a new conversation.
    async with db.transaction() as s:
        conversation = await s.get(Conversation, first.conversation_id)
        assert conversation is not None
        conversation.status = "closed"
    fresh = await pipeline.receive(msg(4, reply_to=("shop:1",)))
    assert fresh.conversation_id not in (None, first.conversation_id)
    await pipeline.close()


async def test_a_reply_to_a_closed_thread_joins_the_customers_open_conversation(
    db: Database,
) -> None:
    pipeline = plugged_pipeline(db)
    first = await pipeline.receive(msg(1))
    async with db.transaction() as s:
        conversation = await s.get(Conversation, first.conversation_id)
        assert conversation is not None
        conversation.status = "closed"
    current = await pipeline.receive(msg(2, text="a new question"))
    assert current.conversation_id not in (None, first.conversation_id)
    # Replies to the closed thread (email In-Reply-To, a [#id] token), one alone and two in a batch.
    by_reply = await pipeline.receive(msg(3, reply_to=("shop:1",)))
    by_token = await pipeline.receive(msg(4, conversation_hint=first.conversation_id))
    both = await asyncio.gather(
        pipeline.receive(msg(5, reply_to=("shop:1",))),
        pipeline.receive(msg(6, conversation_hint=first.conversation_id)),
    )
    await pipeline.close()
    assert {r.conversation_id for r in (by_reply, by_token, *both)} == {current.conversation_id}
    assert await count(db, Conversation) == 2


async def test_received_at_is_the_channel_time(db: Database) -> None:
    pipeline = plugged_pipeline(db)
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    receipt = await pipeline.receive(msg(1, received_at=when))
    async with db.sessions() as s:
        row = await s.get(Interaction, receipt.interaction_id)
    assert row is not None and row.created_at == when
    assert abs(row.created_at - when) < timedelta(seconds=1)
    await pipeline.close()
