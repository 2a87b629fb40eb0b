"""TelegramChannel.send through real python-telegram-bot to the Bot API stand-in."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.intents import Intent, Outbound, Reply, StaffNotice
from bot.messages import Attachment
from channels.base import PermanentError, TransientError
from channels.telegram import Hooks, TelegramChannel, make_bot
from channels.telegram_limits import SlidingWindow, split_text, utf16_len
from tests.channels.conftest import FORUM, GROUP
from tests.servers.botapi import TOKEN, BotApiServer
from tests.servers.ports import free_port

CUSTOMER = 1001


def out(
    text: str = "您好",
    *,
    address: int = CUSTOMER,
    key: str = "reply-1",
    intent: type[Intent] = Reply,
    **kw: object,
) -> Outbound:
    return Outbound("telegram", str(address), intent(text=text, **kw), key)  # type: ignore[arg-type]


def mirror(conversation_id: int, key: str, text: str = "📨 #1 · 张三 · telegram\nhi") -> Outbound:
    return out(
        text,
        address=FORUM,
        key=key,
        intent=StaffNotice,
        conversation_id=conversation_id,
        about="mirror",
        topic=f"#{conversation_id} 张三 · telegram",
    )


@pytest.fixture
async def channel(botapi: BotApiServer) -> AsyncIterator[TelegramChannel]:
    ch = TelegramChannel(make_bot(TOKEN, botapi.base_url), staff_chat_id=FORUM, mode="webhook")
    async with ch.bot:
        yield ch


async def test_text_to_a_customer(channel: TelegramChannel, botapi: BotApiServer) -> None:
    result = await channel.send(out("您好，包裹明天送到。"))
    [sent] = botapi.sent
    assert (sent.method, sent.chat_id, sent.text) == (
        "sendmessage",
        CUSTOMER,
        "您好，包裹明天送到。",
    )
    assert result.external_id == f"{CUSTOMER}:{sent.message_id}"
    assert result.place is None


async def test_answer_replies_to_the_customers_message(
    channel: TelegramChannel, botapi: BotApiServer
) -> None:
    await channel.send(out(answers=(f"{CUSTOMER}:1360", f"{CUSTOMER}:1365")))
    await channel.send(out(key="reply-2", answers=("999:1365",)))  # another chat's id
    assert [s.reply_to for s in botapi.sent] == [1365, None]


async def test_long_text_is_split_at_4096(channel: TelegramChannel, botapi: BotApiServer) -> None:
    text = "\n".join(f"第{n}行 " + "字" * 90 for n in range(120))  # ~11,000 characters
    await channel.send(out(text))
    parts = [s.text or "" for s in botapi.sent]
    assert len(parts) == 3
    assert all(utf16_len(p) <= 4096 for p in parts)
    assert "\n".join(parts) == text  # cut at line breaks, nothing lost


async def test_a_retry_does_not_resend_delivered_parts(
    channel: TelegramChannel, botapi: BotApiServer
) -> None:
    text = "\n".join("x" * 100 for _ in range(100))  # 3 parts
    botapi.fail_next(500, "Internal Server Error", method="sendMessage", after=1)
    with pytest.raises(TransientError):
        await channel.send(out(text, key="reply-long"))
    assert len(botapi.sent) == 1
    await channel.send(out(text, key="reply-long"))
    assert len(botapi.sent) == 3
    assert "\n".join(s.text or "" for s in botapi.sent) == text


async def test_blocked_user_is_unreachable_and_permanent(
    channel: TelegramChannel, botapi: BotApiServer
) -> None:
    botapi.blocked.add(CUSTOMER)
    with pytest.raises(PermanentError) as caught:
        await channel.send(out())
    assert caught.value.unreachable
    assert "blocked" in str(caught.value)


async def test_bad_request_is_permanent_but_not_unreachable(
    channel: TelegramChannel, botapi: BotApiServer
) -> None:
    botapi.fail_next(400, "Bad Request: chat not found")
    with pytest.raises(PermanentError) as caught:
        await channel.send(out())
    assert not caught.value.unreachable


async def test_network_error_is_transient() -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/bot"  # nothing listens there
    ch = TelegramChannel(make_bot(TOKEN, nowhere), staff_chat_id=FORUM, mode="webhook")
    with pytest.raises(TransientError):
        await ch.send(out())
    await ch.stop()


async def test_address_that_is_not_a_chat_id_is_permanent(channel: TelegramChannel) -> None:
    with pytest.raises(PermanentError, match="not a chat id"):
        await channel.send(Outbound("telegram", "shop:17", "hi", "k"))


async def test_media_by_file_id_and_links_for_urls(
    channel: TelegramChannel, botapi: BotApiServer
) -> None:
    await channel.send(out("see", attachments=(
        Attachment(kind="photo", file_id="AgAC-photo", caption="破损"),
        Attachment(kind="file", url="https://shop.example/i/1.png"),
    )))
    assert [(s.method, s.text) for s in botapi.sent] == [
        ("sendmessage", "see\nhttps://shop.example/i/1.png"),
        ("sendphoto", "破损"),
    ]


async def test_first_mirror_creates_the_topic_once(botapi: BotApiServer) -> None:
    saved: dict[int, str] = {}

    async def thread_of(conversation_id: int) -> str | None:
        return saved.get(conversation_id)

    async def save_thread(conversation_id: int, thread: str) -> None:
        saved[conversation_id] = thread

    ch = TelegramChannel(make_bot(TOKEN, botapi.base_url), staff_chat_id=FORUM, mode="webhook",
                         hooks=Hooks(thread_of=thread_of, save_thread=save_thread))
    async with ch.bot:
        first = await ch.send(mirror(1, "mirror-1"))
        second = await ch.send(mirror(1, "mirror-2"))
        other = await ch.send(mirror(2, "mirror-3"))
    assert [name for _, name in botapi.topics[FORUM]] == [
        "#1 张三 · telegram",
        "#2 张三 · telegram",
    ]
    assert first.place == second.place == saved[1]
    assert other.place == saved[2] != saved[1]
    assert [s.thread_id for s in botapi.sent] == [int(saved[1]), int(saved[1]), int(saved[2])]


async def test_a_known_topic_is_reused_after_restart(botapi: BotApiServer) -> None:
    async def thread_of(conversation_id: int) -> str | None:
        return "77"

    ch = TelegramChannel(make_bot(TOKEN, botapi.base_url), staff_chat_id=FORUM, mode="webhook",
                         hooks=Hooks(thread_of=thread_of))
    async with ch.bot:
        result = await ch.send(mirror(1, "mirror-1"))
    assert FORUM not in botapi.topics
    assert result.place == "77"
    assert botapi.sent[0].thread_id == 77


async def test_group_without_topics_gets_plain_messages(botapi: BotApiServer) -> None:
    ch = TelegramChannel(make_bot(TOKEN, botapi.base_url), staff_chat_id=GROUP, mode="webhook")
    async with ch.bot:
        result = await ch.send(
            Outbound(
                "telegram",
                str(GROUP),
                StaffNotice(text="📨 #1", conversation_id=1, about="mirror", topic="#1"),
                "m-1",
            )
        )
    assert botapi.topics == {}
    assert result.place is None
    assert botapi.sent[0].thread_id is None


def test_sliding_window_counts_a_send_until_its_answer_plus_the_window() -> None:
    now = [0.0]
    window = SlidingWindow(3, 1.0, clock=lambda: now[0])
    slots = []
    for _ in range(3):
        assert window.delay() == 0
        slots.append(window.take())
    assert window.delay() == SlidingWindow.POLL  # all three in flight: nothing frees yet
    now[0] = 0.2
    for slot in slots:
        window.done(slot)  # answered at 0.2: the receiver may have counted them as late as that
    assert window.delay() == pytest.approx(1.0)
    now[0] = 0.7
    assert window.delay() == pytest.approx(0.5)
    now[0] = 1.2
    assert window.delay() == 0
    window.push_back(4.0)
    assert window.delay() == pytest.approx(4.0)


def test_split_counts_utf16_units() -> None:
    text = "😀" * 3000  # 6000 UTF-16 units
    parts = split_text(text)
    assert [utf16_len(p) for p in parts] == [4096, 1904]
    assert "".join(parts) == text


def test_split_prefers_spaces_when_there_are_no_lines() -> None:
    text = ("word " * 2000).strip()
    parts = split_text(text)
    assert all(not p.startswith(" ") and not p.endswith(" ") for p in parts)
    assert " ".join(parts) == text
