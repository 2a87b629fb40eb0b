"""Telegram polling while the database is down: a real kefu on a real PostgreSQL server that is
stopped while ten customer messages arrive and started again. Nothing is lost, and the update
offset never moves past an update that is not committed."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy import select

from bot.app import Kefu
from bot.config import parse_config
from channels.telegram import TelegramChannel
from storage.models import Interaction
from tests.servers.botapi import TOKEN, BotApiServer, fixture
from tests.servers.kefu import base_config
from tests.servers.postgres import PostgresServer

pytestmark = pytest.mark.postgres

FIRST_UPDATE = 500_000_001  # the stand-in numbers updates from here


class RestartablePostgres(PostgresServer):
    """A server of its own (the shared one must stay up for other tests) that can be stopped and
    started again on the same data directory and port."""

    halted = False

    def halt(self) -> None:
        # A clean stop, as an administrator restarting the server does (connections are cut).
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        self.halted = True

    def stop(self) -> None:
        if self.halted:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            super().stop()

    def resume(self) -> None:
        opts = (
            f"-p {self.port} -k {self.tmp} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.tmp / "server.log"),
            "-w", "-o", opts, "start",
        )
        self.halted = False


@pytest.fixture
def pg() -> Iterator[RestartablePostgres]:
    server = RestartablePostgres()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def kefu(pg: RestartablePostgres, botapi: BotApiServer) -> AsyncIterator[Kefu]:
    cfg = base_config(pg.create_database(), telegram={
        "enabled": True, "base_url": botapi.base_url, "poll_timeout_seconds": 1})
    app = Kefu(parse_config(cfg), {"KEFU_TELEGRAM_TOKEN": TOKEN})
    channel = app.channels["telegram"]
    assert isinstance(channel, TelegramChannel)
    channel.retry_delay, channel.max_retry_delay = 0.05, 0.4  # the real 1 s .. 30 s, shortened
    task = asyncio.create_task(app.serve(handle_signals=False))
    while app.server is None or not app.server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield app
    finally:
        app.server.should_exit = True
        await task


def message(n: int) -> dict[str, Any]:
    return fixture("message__private_text",
                   {1001: 20_000 + n, 1365: 7000 + n, "你好，我的订单还没到": f"outage {n}"})


async def test_ten_updates_during_a_database_outage_are_all_kept(
    kefu: Kefu, pg: RestartablePostgres, botapi: BotApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kefu.telegram")
    caplog.set_level(logging.WARNING, logger="kefu.leader")
    botapi.push(message(0))
    await botapi.wait_for(lambda b: b.confirmed > FIRST_UPDATE, what="the first update committed")
    await asyncio.to_thread(pg.halt)
    for n in range(1, 11):
        botapi.push(message(n))
    # Long enough for far more than the old five attempts per update.
    # On PostgreSQL the poller is an elected singleton (bot/leader.py): it retries the update
    # until its process loses the database too and stands down, and polls again when the
    # database is back (another process, if there were one, would have taken over).
    def stood_down() -> bool:
        return any(r.getMessage().startswith("leader.deposed singleton=telegram.poll")
                   for r in caplog.records)

    for _ in range(400):
        failures = [
            r for r in caplog.records if r.getMessage().startswith("telegram.update.failure")]
        if len(failures) >= 12 or (failures and stood_down()):
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(2.0)
    # Not one of the ten was committed, so the offset may not have moved past the first of them.
    assert botapi.confirmed <= FIRST_UPDATE + 1
    assert len(failures) >= 12 or (failures and stood_down())
    await asyncio.to_thread(pg.resume)
    await botapi.wait_for(lambda b: b.pending() == 0, timeout=60, what="every update confirmed")
    async with kefu.db.sessions() as session:
        texts = set(await session.scalars(
            select(Interaction.text).where(Interaction.direction == "in")))
    assert texts == {f"outage {n}" for n in range(11)}
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "outage " not in logged  # customers' words never reach the log
    assert "telegram.update.skipped" not in logged


async def test_webhook_mode_answers_503_while_the_database_is_down_then_stores(
    pg: RestartablePostgres, botapi: BotApiServer
) -> None:
    import httpx

    from tests.servers.kefu import running_kefu, url

    cfg = base_config(pg.create_database(), telegram={
        "enabled": True, "base_url": botapi.base_url, "mode": "webhook"})
    env = {"KEFU_TELEGRAM_TOKEN": TOKEN, "KEFU_TELEGRAM_WEBHOOK_SECRET": "s3cret"}
    headers = {"X-Telegram-Bot-Api-Secret-Token": "s3cret"}
    update = {**message(1), "update_id": 77}
    async with running_kefu(cfg, env) as kefu, httpx.AsyncClient(timeout=30) as client:
        channel = kefu.channels["telegram"]
        assert isinstance(channel, TelegramChannel)
        channel.retry_delay, channel.webhook_retry_seconds = 0.05, 1.0  # the real 1 s and 40 s
        await asyncio.to_thread(pg.halt)
        down = await client.post(url(kefu, "/telegram/webhook"), json=update, headers=headers)
        assert down.status_code == 503  # Telegram sends it again later
        await asyncio.to_thread(pg.resume)
        up = await client.post(url(kefu, "/telegram/webhook"), json=update, headers=headers)
        assert up.status_code == 200, up.text
        async with kefu.db.sessions() as session:
            # Messages only: the fixture's update is dated a year back, so the SLA job may log a
            # breach event while the test runs.
            texts = list(await session.scalars(
                select(Interaction.text).where(Interaction.direction == "in")))
        assert texts == ["outage 1"]
