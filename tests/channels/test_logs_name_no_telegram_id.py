"""A customer's Telegram id is personal data (forget erases it): kefu's log lines show only its
last three digits, as they show an email address as a***@example.com. Staff groups (negative ids,
set in config.toml) are logged whole. Real kefu, real python-telegram-bot, the Bot API stand-in."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bot.intents import Outbound, Reply
from bot.text import redact_id
from channels.base import Deferred
from channels.telegram import TelegramChannel, make_bot
from tests.channels.test_telegram_links import ENV, cfg, wait_logged
from tests.servers.botapi import TOKEN, BotApiServer, fixture
from tests.servers.kefu import running_kefu

USER = "1001"  # the fixtures' private chat and user


def kefu_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("kefu")]


def test_redact_id_keeps_the_last_three_digits() -> None:
    assert redact_id(123456789) == "***789"
    assert redact_id("1001") == "***001"
    assert redact_id("12") == "***"


async def test_a_refused_link_logs_no_telegram_id(
    tmp_path: Path, botapi: BotApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_kefu(cfg(tmp_path / "kefu.db", botapi), ENV) as kefu:
        botapi.push(fixture("message__private_start_payload"))  # a forged /start payload
        await wait_logged(kefu, "1001:2")
    lines = kefu_lines(caplog)
    refused = [line for line in lines if line.startswith("telegram.link.")]
    assert refused and all("user=***001" in line for line in refused), refused
    assert not [line for line in lines if USER in line]


async def test_a_flood_wait_on_a_private_chat_logs_no_telegram_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with BotApiServer() as botapi:
        ch = TelegramChannel(make_bot(TOKEN, botapi.base_url), mode="webhook")
        botapi.fail_next(429, "Too Many Requests: retry after 3", retry_after=3)
        async with ch.bot:
            with pytest.raises(Deferred):
                await ch.send(Outbound("telegram", USER, Reply(text="hi"), "r1"))
    lines = kefu_lines(caplog)
    assert any(line.startswith("telegram.send.flood chat=***001") for line in lines), lines
    assert not [line for line in lines if USER in line]
