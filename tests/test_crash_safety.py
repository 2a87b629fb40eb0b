"""`kefu run` as a real process, SIGKILLed mid-stream: nothing acknowledged is lost, nothing
doubles."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from handlers.agents import answer
from storage.db import Database
from storage.models import Interaction, OutboxRow
from tests.servers.callback import CallbackServer
from tests.servers.kefu import post_signed
from tests.servers.ports import free_port
from tests.servers.process import KefuProcess

SECRET = "crash-secret"
TOTAL = 2000
KILL_AFTER = 900
kefu_outbox_batch = 100  # the most rows one worker holds in "sending" at a time


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


async def test_sigkill_in_the_middle_loses_nothing_and_sends_nothing_twice(
    workdir: Path, request: pytest.FixtureRequest
) -> None:
    port = free_port()
    async with CallbackServer(SECRET) as callback:
        (workdir / "config.toml").write_text(
            f"""
[storage]
url = "sqlite+aiosqlite:///{workdir}/kefu.db"
[http]
port = {port}
[outbox]
base_delay_seconds = 0.1
max_delay_seconds = 0.5
poll_interval_seconds = 0.1
[webhook.sources.shop]
secret_env = "SHOP_SECRET"
callback_url = "{callback.url}"
"""
        )
        kefu = KefuProcess(workdir, port, {"SHOP_SECRET": SECRET})
        request.addfinalizer(kefu.ensure_stopped)
        kefu.start()
        await kefu.ready()
        db = Database(f"sqlite+aiosqlite:///{workdir}/kefu.db")
        acknowledged: set[str] = set()
        replies: set[str] = set()
        endpoint = f"http://127.0.0.1:{port}/webhooks/shop"
        killed = asyncio.Event()

        async def send(client: httpx.AsyncClient, n: int) -> None:
            payload = {"id": f"m{n}", "user": {"id": f"u{n % 97}"}, "text": f"message {n}"}
            while True:
                try:
                    r = await post_signed(client, endpoint, SECRET, payload)
                except httpx.TransportError:
                    await asyncio.sleep(0.05)  # kefu is down: a real sender retries
                    continue
                if r.status_code in (200, 202):
                    acknowledged.add(f"m{n}")
                    if len(acknowledged) == KILL_AFTER and not killed.is_set():
                        killed.set()
                        kefu.kill()
                        kefu.start()
                    return
                raise AssertionError(f"{r.status_code} {r.text}")

        async def reply_now_and_then() -> None:
            # Agents answer while messages stream in, as `kefu reply` does, from another process.
            while len(replies) < 60 and not killed.is_set():
                async with db.sessions() as s:
                    conversation_id = await s.scalar(
                        select(Interaction.conversation_id).order_by(Interaction.id.desc()).limit(1)
                    )
                if conversation_id is not None:
                    async with db.transaction() as s:
                        result = await answer(
                            s, conversation_id, f"reply {len(replies)}", agent="cli"
                        )
                    replies.add(f"reply-{result.interaction_id}")
                await asyncio.sleep(0.01)

        async with httpx.AsyncClient(timeout=30) as client:
            queue = list(range(TOTAL))

            async def lane() -> None:
                while queue:
                    await send(client, queue.pop(0))

            await asyncio.gather(reply_now_and_then(), *(lane() for _ in range(16)))
        assert killed.is_set()
        await kefu.ready()

        async def all_delivered() -> None:
            while not replies <= set(callback.delivered_row_keys()):
                await asyncio.sleep(0.05)

        await asyncio.wait_for(all_delivered(), 30)
        assert kefu.terminate() == 0

        async with db.sessions() as s:
            ids = list(
                await s.scalars(
                    select(Interaction.external_id).where(Interaction.direction == "in")
                )
            )
            statuses = dict(
                (
                    await s.execute(
                        select(OutboxRow.status, func.count()).group_by(OutboxRow.status)
                    )
                ).all()
            )
        await db.dispose()
        assert len(ids) == len(set(ids)) == TOTAL
        assert {f"shop:{m}" for m in acknowledged} == set(ids)
        assert len(replies) >= 10
        assert statuses == {"sent": len(replies)}
        delivered = callback.delivered_row_keys()
        assert set(delivered) == replies
        # At-least-once on the wire, exactly once by Idempotency-Key: only a row caught between its
        # send and its record by the kill may arrive twice, and then with the same key.
        resent = sum(delivered.values()) - len(replies)
        print(f"replies={len(replies)} re-sent after the kill={resent}")
        assert resent <= kefu_outbox_batch
