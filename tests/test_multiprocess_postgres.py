"""Two `kefu run` processes sharing one PostgreSQL: each message logged once, each reply sent
once."""

from __future__ import annotations

import asyncio
import contextlib
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
from tests.servers.postgres import PostgresServer
from tests.servers.process import KefuProcess

SECRET = "pg-secret"
pytestmark = pytest.mark.postgres


async def test_two_processes_share_the_log_and_the_outbox(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    url = postgres.create_database()
    async with CallbackServer(SECRET) as callback, contextlib.AsyncExitStack() as stack:
        processes = []
        for n in (1, 2):
            port = free_port()
            (tmp_path / f"kefu{n}.toml").write_text(
                f'[storage]\nurl = "{url}"\n[http]\nport = {port}\n'
                "[outbox]\npoll_interval_seconds = 0.05\nbatch_size = 5\n"
                '[webhook.sources.shop]\nsecret_env = "SHOP_SECRET"\ncallback_url = '
                f'"{callback.url}"\n'
            )
            processes.append(KefuProcess(tmp_path, port, {"SHOP_SECRET": SECRET}, f"kefu{n}.toml"))
        # Both migrate at start: the second must find the schema in place, not fail.
        for p in processes:
            p.start()
            stack.callback(p.ensure_stopped)
        await asyncio.gather(*(p.ready() for p in processes))

        async with httpx.AsyncClient(timeout=120) as client:
            # Every message goes to both processes at once, as a retrying sender behind a balancer
            # would.
            async def both(n: int) -> list[int]:
                payload = {"id": f"m{n}", "user": {"id": f"u{n % 20}"}, "text": f"message {n}"}
                rs = await asyncio.gather(
                    *(
                        post_signed(
                            client, f"http://127.0.0.1:{p.port}/webhooks/shop", SECRET, payload
                        )
                        for p in processes
                    )
                )
                return sorted(r.status_code for r in rs)

            results = await asyncio.gather(*(both(n) for n in range(200)))
        assert all(codes == [200, 202] for codes in results), set(map(tuple, results))

        db = Database(url)
        async with db.sessions() as s:
            logged = await s.scalar(select(func.count()).select_from(Interaction))
            conversations = list(await s.scalars(select(Interaction.conversation_id).distinct()))
        assert logged == 200 and len(conversations) == 20  # one open conversation per customer

        keys = set()
        for conversation_id in conversations:
            async with db.transaction() as s:
                answered = await answer(s, conversation_id, "on it", agent="amy")
                keys.add(f"reply-{answered.interaction_id}")
        await callback.wait_for(len(keys), timeout=20)

        async def all_sent() -> None:  # a row is marked sent just after its callback answers
            while True:
                async with db.sessions() as s:
                    if set(await s.scalars(select(OutboxRow.status))) == {"sent"}:
                        return
                await asyncio.sleep(0.02)

        await asyncio.wait_for(all_sent(), 20)
        await db.dispose()
        # Not a pause: both processes stop cleanly (each waits for its sends in flight), so the
        # receiver's count is final when it is read.
        assert [p.terminate() for p in processes] == [0, 0]
        delivered = callback.delivered_row_keys()
        assert set(delivered) == keys and set(delivered.values()) == {1}
