"""A shop's callback endpoint that refuses a message often quotes it back ("422: invalid field
text: 'Sorry Meixiu, your zorblax…'"). That quote is what kefu sent the customer, their name and
words: it is kept with the outbox row (`kefu outbox list` shows it to the person fixing the
cause) but never reaches the log, which says who refused and how (#12). Real kefu over HTTP, a
receiver that echoes the request, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web
from sqlalchemy import select

from handlers import agents
from storage.models import OutboxRow
from tests.servers.kefu import base_config, post_signed, running_kefu, url
from tests.servers.ports import free_port

SECRET = "echo-refusal-secret"
NAME, WORD = "Meixiula", "zorblaxion"


class EchoRefuser:
    """Answers every callback `status` with the request's own text quoted back."""

    def __init__(self, status: int) -> None:
        self.status, self.port, self.seen = status, free_port(), 0

    async def handle(self, request: web.Request) -> web.Response:
        self.seen += 1
        sent = json.loads(await request.read())
        return web.json_response(
            {"error": "invalid", "detail": f"field text: {sent.get('text')!r}"}, status=self.status
        )


@pytest.fixture(params=[422, 503])
async def refuser(request: pytest.FixtureRequest) -> AsyncIterator[EchoRefuser]:
    server = EchoRefuser(request.param)
    app = web.Application()
    app.router.add_post("/cb", server.handle)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", server.port)
    await site.start()
    try:
        yield server
    finally:
        await runner.cleanup()


async def test_a_refusal_quoting_the_message_is_logged_without_it(
    db_url: str, refuser: EchoRefuser, caplog: pytest.LogCaptureFixture
) -> None:
    config = base_config(
        db_url,
        webhook={"sources": {"shop": {"secret_env": "SHOP_SECRET",
                                      "callback_url": f"http://127.0.0.1:{refuser.port}/cb"}}},
    )
    caplog.set_level(logging.DEBUG)
    async with (
        running_kefu(config, {"SHOP_SECRET": SECRET}) as kefu,
        httpx.AsyncClient(timeout=10) as client,
    ):
        r = await post_signed(client, url(kefu, "/webhooks/shop"), SECRET,
                              {"id": "m-1", "user": {"id": "u-1", "name": NAME}, "text": "hi"})
        assert r.status_code == 202, r.text
        async with kefu.db.transaction() as s:
            answer = await agents.answer(
                s, r.json()["conversation_id"], f"Sorry {NAME}, your {WORD} ships today",
                agent="amy",
            )

        async def refused() -> OutboxRow:
            while True:
                async with kefu.db.sessions() as s:
                    row = await s.scalar(
                        select(OutboxRow).where(OutboxRow.interaction_id == answer.interaction_id)
                    )
                if row is not None and row.last_error:
                    return row
                await asyncio.sleep(0.05)

        row = await asyncio.wait_for(refused(), 10)
    assert refuser.seen >= 1
    assert row.last_error is not None and WORD in row.last_error  # kept for the person fixing it
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("kefu")]
    assert any(f"callback answered {refuser.status}" in line for line in lines), lines
    assert [line for line in lines if WORD in line or NAME in line] == []
