"""Turning Telegram on: clear errors for what a person must fix, and the token never in a log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bot.app import Kefu
from bot.config import ConfigError, parse_config
from tests.servers.botapi import TOKEN, BotApiServer, fixture
from tests.servers.kefu import base_config, running_kefu


def telegram(
    tmp_path: Path, botapi: BotApiServer | None = None, **extra: object
) -> dict[str, object]:
    section = {"enabled": True, "poll_timeout_seconds": 1, **extra}
    if botapi is not None:
        section["base_url"] = botapi.base_url
    return base_config(f"sqlite+aiosqlite:///{tmp_path}/kefu.db", telegram=section)


def test_missing_token_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KEFU_TELEGRAM_TOKEN is not set"):
        Kefu(parse_config(telegram(tmp_path)), {})


def test_webhook_mode_needs_a_valid_secret(tmp_path: Path) -> None:
    config = parse_config(telegram(tmp_path, mode="webhook"))
    with pytest.raises(ConfigError, match="KEFU_TELEGRAM_WEBHOOK_SECRET is not set"):
        Kefu(config, {"KEFU_TELEGRAM_TOKEN": TOKEN})
    with pytest.raises(ConfigError, match="1-256 characters"):
        Kefu(config, {"KEFU_TELEGRAM_TOKEN": TOKEN, "KEFU_TELEGRAM_WEBHOOK_SECRET": "has spaces"})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("base_url", "127.0.0.1:8081/bot", "must start with http"),
     ("bot_username", "a b", "bot's username"),
     ("mode", "push", "polling"),
     ("messages_per_second", 0, "greater than 0")],
)
def test_bad_settings_name_the_key(tmp_path: Path, key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=f"\\[telegram\\] {key} has value") as caught:
        parse_config(telegram(tmp_path, **{key: value}))
    assert message in str(caught.value)


async def test_a_rejected_token_is_a_config_error_without_the_token(
    tmp_path: Path, botapi: BotApiServer
) -> None:
    wrong = "7000000001:AAH-wrong-token-value-0000000000000"
    with pytest.raises(ConfigError, match="Telegram rejected the bot token") as caught:
        async with running_kefu(telegram(tmp_path, botapi), {"KEFU_TELEGRAM_TOKEN": wrong}):
            pass
    assert wrong not in str(caught.value)


async def test_the_token_never_reaches_the_log(
    tmp_path: Path, botapi: BotApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_kefu(telegram(tmp_path, botapi), {"KEFU_TELEGRAM_TOKEN": TOKEN}):
        botapi.push(fixture("message__private_text"))
        await botapi.wait_for(lambda b: b.pending() == 0 and len(b.offsets) > 1, what="a poll")
    # The stand-in's own access log (aiohttp) shows request paths; kefu's side must not.
    kefu_side = "\n".join(
        r.getMessage() for r in caplog.records if not r.name.startswith("aiohttp")
    )
    assert "telegram.started" in kefu_side  # the run did log
    assert TOKEN.split(":")[1] not in kefu_side
