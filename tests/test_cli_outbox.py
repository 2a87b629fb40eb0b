"""Dead letters, as a person meets them: a reply the receiver refused, seen in /healthz and
/metrics, listed and sent again from the CLI while kefu runs. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from bot.app import Kefu
from bot.cli import app
from handlers.agents import answer
from storage.models import OutboxRow
from tests.servers.callback import CallbackServer
from tests.servers.kefu import base_config, post_signed, running_kefu, url

SECRET = "dead-letters-secret"


@pytest.fixture
async def callback() -> AsyncIterator[CallbackServer]:
    async with CallbackServer(SECRET) as server:
        yield server


@pytest.fixture
async def kefu(db_url: str, callback: CallbackServer, tmp_path: Path) -> AsyncIterator[Kefu]:
    config = base_config(
        db_url,
        webhook={"sources": {"shop": {"secret_env": "SHOP_SECRET", "callback_url": callback.url}}},
    )
    (tmp_path / "config.toml").write_text(
        f'[storage]\nurl = "{db_url}"\n[webhook.sources.shop]\nsecret_env = "SHOP_SECRET"\n'
    )
    async with running_kefu(config, {"SHOP_SECRET": SECRET}) as k:
        yield k


async def cli(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    """The real `kefu` command (it runs its own event loop, hence a thread)."""

    def run() -> tuple[int, str, str]:
        result = CliRunner().invoke(app, [*args, "--config", str(tmp_path / "config.toml")])
        return result.exit_code, result.stdout, result.stderr

    return await asyncio.to_thread(run)


async def dead_reply(kefu: Kefu, callback: CallbackServer, text: str, n: int) -> int:
    callback.script = [400]  # the receiver refuses it for good
    async with httpx.AsyncClient() as client:
        r = await post_signed(
            client,
            url(kefu, "/webhooks/shop"),
            SECRET,
            {"id": f"m{n}", "user": {"id": f"u{n}"}, "text": "hi"},
        )
    async with kefu.db.transaction() as session:
        await answer(session, int(r.json()["conversation_id"]), text, agent="alice")
    kefu.worker.wake()
    while True:
        async with kefu.db.sessions() as session:
            row = await session.scalar(
                select(OutboxRow).where(OutboxRow.payload["text"].as_string() == text)
            )
        if row is not None and row.status == "dead":
            return row.id
        await asyncio.sleep(0.02)


async def status_of(kefu: Kefu, row_id: int, status: str) -> OutboxRow:
    while True:
        async with kefu.db.sessions() as session:
            row = await session.get(OutboxRow, row_id)
        if row is not None and row.status == status:
            return row
        await asyncio.sleep(0.02)


async def test_a_dead_reply_is_visible_listed_and_sent_again(
    kefu: Kefu, callback: CallbackServer, tmp_path: Path
) -> None:
    row_id = await dead_reply(kefu, callback, "your refund is on its way", 1)
    async with httpx.AsyncClient() as client:
        health = (await client.get(url(kefu, "/healthz"))).json()
        metrics = (await client.get(url(kefu, "/metrics"))).text
    assert health["outbox"]["dead"] == 1
    assert 'kefu_outbox_depth{status="dead"} 1.0' in metrics

    code, stdout, _ = await cli(tmp_path, "outbox", "list", "--status", "dead", "--format", "json")
    assert code == 0
    [listed] = json.loads(stdout)
    assert listed["id"] == row_id and listed["status"] == "dead" and "400" in listed["last_error"]
    code, stdout, _ = await cli(tmp_path, "outbox", "list")
    assert code == 0 and "dead" in stdout and str(row_id) in stdout

    code, stdout, _ = await cli(tmp_path, "outbox", "retry", str(row_id))
    assert code == 0 and f"queued again: {row_id}" in stdout
    await callback.wait_for(1)
    assert callback.delivered()[0].json["text"] == "your refund is on its way"
    row = await status_of(kefu, row_id, "sent")
    assert row.attempts == 1
    # the same idempotency key as the refused attempt: a receiver that saw it can drop a repeat
    assert callback.requests[0].key == callback.delivered()[0].key

    code, _, _ = await cli(tmp_path, "outbox", "retry", str(row_id))
    assert code == 1
    code, stdout, _ = await cli(tmp_path, "outbox", "retry", "999999")
    assert code == 1 and "no such outbox row" in stdout


async def test_retry_dead_sends_every_dead_row_but_not_those_stopped_on_purpose(
    kefu: Kefu, callback: CallbackServer, tmp_path: Path
) -> None:
    first = await dead_reply(kefu, callback, "first", 1)
    second = await dead_reply(kefu, callback, "second", 2)
    forgotten = await dead_reply(kefu, callback, "third", 3)
    async with kefu.db.transaction() as session:
        await session.execute(
            update(OutboxRow).where(OutboxRow.id == forgotten).values(payload={"erased": True})
        )
    code, stdout, _ = await cli(tmp_path, "outbox", "retry", "--dead")
    assert code == 0, stdout
    assert f"queued again: {first}, {second}" in stdout
    assert f"not queued: {forgotten}: the customer was forgotten" in stdout
    await callback.wait_for(2)
    assert sorted(r.json["text"] for r in callback.delivered()) == ["first", "second"]
    await status_of(kefu, second, "sent")
    code, stdout, _ = await cli(tmp_path, "outbox", "list", "--status", "dead", "--format", "json")
    assert [r["id"] for r in json.loads(stdout)] == [forgotten]


async def test_bad_options_are_one_line_and_exit_2(kefu: Kefu, tmp_path: Path) -> None:
    code, _, stderr = await cli(tmp_path, "outbox", "list", "--status", "lost")
    assert code == 2 and "--status has value 'lost'" in stderr
    code, _, stderr = await cli(tmp_path, "outbox", "retry")
    assert code == 2 and "ids or --dead" in stderr
