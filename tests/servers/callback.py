"""A webhook source's callback endpoint: records every signed reply kefu POSTs to it."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from channels.webhook import sign
from tests.servers.ports import free_port


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def key(self) -> str:
        return self.headers["Idempotency-Key"]

    @property
    def row_key(self) -> str:
        """The outbox row's dedupe key inside the idempotency key ("reply-17.<32 hex>")."""
        return self.key.rpartition(".")[0] or self.key


@dataclass
class CallbackServer:
    """Answers each request with the next status in `script` (then 200), like a flaky receiver."""

    secret: str
    script: list[int] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    # Seconds to hold each answer, request by request (a receiver that hangs), then none.
    delays: list[float] = field(default_factory=list)
    pending: int = 0  # requests received and not yet answered
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/callback"

    def delivered(self) -> list[Received]:
        return [r for r in self.requests if r.status < 300]

    def delivered_keys(self) -> Counter[str]:
        return Counter(r.key for r in self.delivered())

    def delivered_row_keys(self) -> Counter[str]:
        return Counter(r.row_key for r in self.delivered())

    async def wait_for(self, n: int, timeout: float = 10.0) -> list[Received]:
        async def poll() -> None:
            while len(self.delivered()) < n:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(poll(), timeout)
        return self.delivered()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        if self.delays:
            self.pending += 1
            try:
                await asyncio.sleep(self.delays.pop(0))
            finally:
                self.pending -= 1
        ts = headers.get("X-Kefu-Timestamp", "")
        if sign(self.secret, ts, body) != headers.get("X-Kefu-Signature"):
            status = 401
        else:
            status = self.script.pop(0) if self.script else 200
        self.requests.append(Received(headers, body, status))
        return web.json_response({"ok": status < 300}, status=status)

    async def __aenter__(self) -> CallbackServer:
        app = web.Application()
        app.router.add_post("/callback", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()
