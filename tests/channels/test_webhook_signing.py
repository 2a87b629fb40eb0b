"""Standard Webhooks 1.0 and secret rotation, with the `standardwebhooks` reference package as the
other side: it signs requests a real kefu accepts and verifies the callbacks kefu sends."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from bot.app import Kefu
from bot.config import ConfigError, parse_config
from channels.webhook_signing import sign
from handlers import agents
from tests.servers.kefu import base_config, running_kefu, url
from tests.servers.ports import free_port

OLD = "whsec_" + base64.b64encode(b"the old secret, 32 bytes long!!!").decode()
NEW = "whsec_" + base64.b64encode(b"the new secret, also 32 bytes..!").decode()


class Receiver:
    """A callback endpoint that keeps every request; the test verifies them afterwards."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.arrived = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/cb"

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        self.arrived.set()
        return web.json_response({"ok": True})

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Receiver]:
        app = web.Application()
        app.router.add_post("/cb", self.handle)
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        try:
            yield self
        finally:
            await runner.cleanup()

    async def next(self) -> tuple[dict[str, str], bytes]:
        await asyncio.wait_for(self.arrived.wait(), 15)
        self.arrived.clear()
        return self.requests[-1]


def config(db_url: str, signing: str, callback: str, *, rotating: bool) -> dict[str, Any]:
    source: dict[str, Any] = {
        "secret_env": "NEW_SECRET",
        "callback_url": callback,
        "signing": signing,
    }
    if rotating:
        source["previous_secret_env"] = "OLD_SECRET"
    return base_config(db_url, webhook={"sources": {"shop": source}})


def standard_request(secret: str, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """Signed by the reference package, exactly as an integrator's code would."""
    body = json.dumps(payload, ensure_ascii=False)
    msg_id = f"msg_{payload['id']}"
    when = datetime.now(UTC)
    headers = {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, when, body),
    }
    return body.encode(), headers


def message(n: int, user: str = "c-1") -> dict[str, Any]:
    return {"id": f"o-{n}", "user": {"id": user, "name": "张三"}, "text": f"消息 {n}"}


async def answer(running: Kefu, conversation_id: int, text: str) -> None:
    async with running.db.transaction() as session:
        await agents.answer(session, conversation_id, text, agent="alice")
    running.worker.wake()


async def test_standard_webhooks_both_ways(tmp_path: Any) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path}/kefu.db"
    async with (
        Receiver().running() as receiver,
        running_kefu(
            config(db_url, "standard", receiver.url, rotating=False), {"NEW_SECRET": NEW}
        ) as running,
        httpx.AsyncClient(timeout=10) as client,
    ):
        endpoint = url(running, "/webhooks/shop")
        body, headers = standard_request(NEW, message(1))
        first = await client.post(endpoint, content=body, headers=headers)
        assert first.status_code == 202, first.text
        again = await client.post(endpoint, content=body, headers=headers)
        assert again.status_code == 200  # the body's id still dedupes

        wrong, wrong_headers = standard_request(OLD, message(2))
        refused = await client.post(endpoint, content=wrong, headers=wrong_headers)
        assert refused.status_code == 401 and "webhook-signature" in refused.json()["message"]
        bare = await client.post(
            endpoint, content=wrong, headers={"Content-Type": "application/json"}
        )
        assert bare.status_code == 401 and "webhook-id" in bare.json()["message"]
        stale_headers = {**headers, "webhook-timestamp": str(int(time.time()) - 3600)}
        stale = await client.post(endpoint, content=body, headers=stale_headers)
        assert stale.status_code == 401 and "away from now" in stale.json()["message"]

        await answer(running, first.json()["conversation_id"], "您好，包裹明天送达")
        got_headers, got_body = await receiver.next()
        # The reference package verifies kefu's callback (it checks id, timestamp and signature).
        verified = Webhook(NEW).verify(got_body, got_headers)
        assert verified["text"] == "您好，包裹明天送达" and verified["user"] == {"id": "c-1"}
        assert got_headers["webhook-id"] == got_headers["Idempotency-Key"]
        with pytest.raises(WebhookVerificationError):
            Webhook(OLD).verify(got_body, got_headers)
        assert "X-Kefu-Signature" not in got_headers


@pytest.mark.parametrize("signing", ["standard", "kefu"])
async def test_rotation_keeps_old_and_new_working_until_the_old_is_removed(
    tmp_path: Any, signing: str
) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path}/kefu.db"
    old, new = (OLD, NEW) if signing == "standard" else ("old-kefu-secret", "new-kefu-secret")

    def request(secret: str, n: int) -> tuple[bytes, dict[str, str]]:
        if signing == "standard":
            return standard_request(secret, message(n))
        body = json.dumps(message(n)).encode()
        stamp = str(int(time.time()))
        return body, {"X-Kefu-Timestamp": stamp, "X-Kefu-Signature": sign(secret, stamp, body)}

    def verify_callback(secret: str, headers: dict[str, str], body: bytes) -> bool:
        if signing == "standard":
            try:
                Webhook(secret).verify(body, headers)
            except WebhookVerificationError:
                return False
            return True
        want = sign(secret, headers["X-Kefu-Timestamp"], body)
        return want in headers["X-Kefu-Signature"].split()

    async with Receiver().running() as receiver:
        env = {"NEW_SECRET": new, "OLD_SECRET": old}
        async with (
            running_kefu(config(db_url, signing, receiver.url, rotating=True), env) as running,
            httpx.AsyncClient(timeout=10) as client,
        ):
            endpoint = url(running, "/webhooks/shop")
            for n, secret in enumerate((old, new, old), start=1):
                body, headers = request(secret, n)
                accepted = await client.post(endpoint, content=body, headers=headers)
                assert accepted.status_code == 202, (secret, accepted.text)
            body, headers = request(
                "someone-else"
                if signing == "kefu"
                else "whsec_" + base64.b64encode(b"x" * 24).decode(),
                9,
            )
            assert (await client.post(endpoint, content=body, headers=headers)).status_code == 401
            await answer(running, accepted.json()["conversation_id"], "both signatures")
            got_headers, got_body = await receiver.next()
            # A receiver still on the old secret and one already on the new both accept it.
            assert verify_callback(old, got_headers, got_body)
            assert verify_callback(new, got_headers, got_body)

        # Rotation done: the old secret's variable is removed from the config.
        async with (
            running_kefu(
                config(db_url, signing, receiver.url, rotating=False), {"NEW_SECRET": new}
            ) as running,
            httpx.AsyncClient(timeout=10) as client,
        ):
            endpoint = url(running, "/webhooks/shop")
            body, headers = request(old, 10)
            assert (await client.post(endpoint, content=body, headers=headers)).status_code == 401
            body, headers = request(new, 11)
            assert (await client.post(endpoint, content=body, headers=headers)).status_code == 202
            await answer(running, 1, "new only")
            got_headers, got_body = await receiver.next()
            assert verify_callback(new, got_headers, got_body)
            assert not verify_callback(old, got_headers, got_body)


def test_a_standard_source_needs_a_whsec_secret(tmp_path: Any) -> None:
    cfg = parse_config(
        config(
            f"sqlite+aiosqlite:///{tmp_path}/k.db",
            "standard",
            "http://127.0.0.1:9/cb",
            rotating=True,
        )
    )
    with pytest.raises(ConfigError) as bad:
        Kefu(cfg, {"NEW_SECRET": NEW, "OLD_SECRET": "not base64 at all!"})
    assert "NEW_SECRET or OLD_SECRET" in str(bad.value) and "whsec_" in str(bad.value)
    with pytest.raises(ConfigError) as bad_signing:
        parse_config({"webhook": {"sources": {"shop": {"secret_env": "X", "signing": "svix"}}}})
    assert "signing" in str(bad_signing.value)
