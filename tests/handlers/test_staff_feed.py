"""Staff posts waiting for one place are merged, through the real pipeline, on SQLite and
PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from bot.effects import ConversationView, CustomerView, Decision, Logged, Post, Verdict
from bot.intents import StaffNotice, from_payload
from bot.messages import Attachment, Inbound
from bot.plugins import pipeline as plugged_pipeline
from handlers import routing, staff_feed
from handlers.staff_group import mirror_observer
from storage import staff
from storage.db import Database
from storage.models import OutboxRow

STAFF_CHAT = -1001234567890
ALICE = 2002


def message(n: int, text: str, *, user: str = "1001", **kw: object) -> Inbound:
    return Inbound(channel="telegram", external_id=f"{user}:{n}", address=user, text=text,
                   display_name="张三", received_at=datetime.now(UTC), **kw)  # type: ignore[arg-type]


async def staff_rows(db: Database) -> list[OutboxRow]:
    async with db.sessions() as session:
        return list(await session.scalars(select(OutboxRow).order_by(OutboxRow.id)))


async def test_messages_waiting_for_one_topic_become_one_post(db: Database) -> None:
    pipeline = plugged_pipeline(db, observers=[mirror_observer(STAFF_CHAT)])
    for n in range(5):
        await pipeline.receive(message(n, f"part {n}"))
    await pipeline.receive(message(9, "other customer", user="1002"))
    await pipeline.close()
    rows = await staff_rows(db)
    assert [r.address for r in rows] == [str(STAFF_CHAT)] * 2
    first, other = rows
    expected = ["📨 #1 · 张三 · telegram", *(f"part {n}" for n in range(5))]
    assert first.payload["text"].splitlines() == expected
    merged = from_payload(first.payload)
    assert isinstance(merged, StaffNotice) and merged.merged == 5
    assert "other customer" in other.payload["text"]


async def test_a_claimed_post_takes_text_until_the_channel_takes_it(db: Database) -> None:
    pipeline = plugged_pipeline(db, observers=[mirror_observer(STAFF_CHAT)])
    await pipeline.receive(message(0, "first"))
    async with db.transaction() as session:
        row = await session.scalar(select(OutboxRow))
        assert row is not None
        row.status = "sending"  # claimed by the outbox, waiting in its batch
    await pipeline.receive(message(1, "second"))
    [row] = await staff_rows(db)
    # The channel takes it for the wire by the key it is given (dedupe key and nonce).
    taken = await staff_feed.take(db, row.idempotency_key)
    assert taken is not None and taken["text"].splitlines()[1:] == ["first", "second"]
    await pipeline.receive(message(2, "third"))  # after the take: a post of its own
    await pipeline.close()
    rows = await staff_rows(db)
    assert [r.payload["text"].splitlines()[1:] for r in rows] == [["first", "second"], ["third"]]
    assert await staff_feed.take(db, rows[0].idempotency_key) == taken  # the same, once taken


async def test_media_and_long_texts_get_posts_of_their_own(db: Database) -> None:
    pipeline = plugged_pipeline(db, observers=[mirror_observer(STAFF_CHAT)])
    await pipeline.receive(message(0, "长" * 3000))
    await pipeline.receive(message(1, "长" * 3000))  # both would not fit one Telegram message
    photo = Attachment(kind="photo", file_id="AgAC")
    await pipeline.receive(message(2, "photo", attachments=(photo,)))
    await pipeline.receive(message(3, "after"))
    await pipeline.close()
    rows = await staff_rows(db)
    assert len(rows) == 4


async def test_an_assigned_conversation_goes_to_the_agents_chat(db: Database) -> None:
    async with db.transaction() as session:
        await staff.add(session, "alice", telegram_user_id=ALICE)
    pipeline = plugged_pipeline(db, route=routing.route, observers=[mirror_observer(STAFF_CHAT)])
    for n in range(3):
        await pipeline.receive(message(n, f"part {n}"))
    await pipeline.close()
    rows = await staff_rows(db)
    by_address = {r.address: r for r in rows}
    assert sorted(by_address) == sorted([str(ALICE), str(STAFF_CHAT)]) and len(rows) == 2
    assert by_address[str(ALICE)].payload["text"].splitlines()[1:] == ["part 0", "part 1", "part 2"]
    direct = from_payload(by_address[str(ALICE)].payload)
    assert isinstance(direct, StaffNotice) and direct.agent == "alice"
    assert direct.fallback == str(STAFF_CHAT)  # where it goes if alice's chat cannot take it
    line = by_address[str(STAFF_CHAT)].payload["text"]
    assert line == "👤 #1 张三 · telegram → alice (private chat)"  # the group's one line


async def test_the_mirror_observer_returns_its_post_and_writes_nothing(db: Database) -> None:
    """Writes go back as effects: the pipeline queues (or merges) the post, not the observer."""
    note = Logged(
        inbound=message(0, "hi"),
        interaction_id=7,
        customer=CustomerView(id=1, display_name="张三"),
        conversation=ConversationView(id=3, customer_id=1, staff_thread="77"),
        new_conversation=True,
        verdict=Verdict(False),
        decision=Decision(),
    )
    async with db.sessions() as session:
        effects = await mirror_observer(STAFF_CHAT)(session, note)
    assert await staff_rows(db) == []
    [post] = effects or []
    assert isinstance(post, Post) and post.feed is not None and post.interaction_id == 7
    assert (post.out.channel, post.out.address, post.out.dedupe_key) == (
        "telegram", str(STAFF_CHAT), "mirror-7"
    )
    notice = post.out.intent
    assert isinstance(notice, StaffNotice)
    assert (notice.about, notice.place, notice.topic) == ("mirror", "77", "#3 张三 · telegram")
    assert post.feed.text == "hi" and notice.text == "📨 #3 · 张三 · telegram\nhi"
