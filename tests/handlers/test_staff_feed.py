"""Staff posts waiting for one place are merged, through the real pipeline, on SQLite and
PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from bot.effects import ConversationView, CustomerView, Decision, Logged, Post, Verdict
from bot.intents import StaffNotice, StaffRoom, from_payload
from bot.messages import Attachment, Inbound
from bot.plugins import pipeline as plugged_pipeline
from channels.telegram import TelegramChannel
from handlers import routing, staff_feed
from handlers.staff_group import mirror_observer
from storage import staff
from storage.db import Database
from storage.models import OutboxRow

STAFF_CHAT = -1001234567890
STAFF_ROOM = StaffRoom("telegram", str(STAFF_CHAT), TelegramChannel.max_text)
ALICE = 2002


def message(n: int, text: str, *, user: str = "1001", **kw: object) -> Inbound:
    return Inbound(channel="telegram", external_id=f"{user}:{n}", address=user, text=text,
                   display_name="张三", received_at=datetime.now(UTC), **kw)  # type: ignore[arg-type]


async def staff_rows(db: Database) -> list[OutboxRow]:
    async with db.sessions() as session:
        return list(await session.scalars(select(OutboxRow).order_by(OutboxRow.id)))


async def test_messages_waiting_for_one_topic_become_one_post(db: Database) -> None:
    pipeline = plugged_pipeline(db, observers=[mirror_observer(STAFF_ROOM)])
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
    pipeline = plugged_pipeline(db, observers=[mirror_observer(STAFF_ROOM)])
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
    pipeline = plugged_pipeline(db, observers=[mirror_observer(STAFF_ROOM)])
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
    pipeline = plugged_pipeline(db, route=routing.route, observers=[mirror_observer(STAFF_ROOM)])
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
        effects = await mirror_observer(STAFF_ROOM)(session, note)
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


async def test_a_post_grows_only_while_it_stays_one_message_of_the_staff_channel(
    db: Database,
) -> None:
    # The limit is the staff channel's own (channels.base.Channel.max_text), not Telegram's:
    # a channel that sends at most 200 units as one message gets posts of at most 200 - SPARE.
    small = StaffRoom("chat", "room-1", max_text=200)
    pipeline = plugged_pipeline(db, observers=[mirror_observer(small)])
    for n in range(6):
        await pipeline.receive(message(n, f"{n}" * 30))
    await pipeline.close()
    rows = await staff_rows(db)
    assert {(r.channel, r.address) for r in rows} == {("chat", "room-1")}
    assert all(len(r.payload["text"]) <= 200 - staff_feed.SPARE for r in rows)
    assert len(rows) == 3  # the head and two parts fit, a third would not
    texts = [r.payload["text"].splitlines()[1:] for r in rows]
    assert [line for text in texts for line in text] == [f"{n}" * 30 for n in range(6)]


async def test_a_channel_without_a_length_limit_takes_all_of_it_in_one_post(
    db: Database,
) -> None:
    pipeline = plugged_pipeline(db, observers=[mirror_observer(StaffRoom("chat", "room-1"))])
    await pipeline.receive(message(0, "长" * 3000))
    await pipeline.receive(message(1, "长" * 3000))
    await pipeline.close()
    [row] = await staff_rows(db)
    assert row.payload["text"].splitlines()[1:] == ["长" * 3000] * 2


def test_the_staff_room_takes_its_limit_from_the_running_channel() -> None:
    from bot.care import staff_room
    from bot.config import parse_config

    cfg = parse_config({"telegram": {"enabled": True, "staff_chat_id": STAFF_CHAT}})

    class Small:
        name = "telegram"
        max_text = 1000

    room = staff_room(cfg, {"telegram": Small()})  # type: ignore[dict-item]
    assert room == StaffRoom("telegram", str(STAFF_CHAT), 1000)
    assert staff_room(cfg) == StaffRoom("telegram", str(STAFF_CHAT), TelegramChannel.max_text)
    assert staff_room(cfg, {}) is None  # Telegram not running: staff posts would go nowhere
