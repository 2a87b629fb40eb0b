"""Runs a real kefu (HTTP server, pipeline, outbox worker) inside the test's event loop."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import httpx

from bot.app import Kefu
from bot.config import parse_config
from channels.webhook import sign
from tests.servers.ports import free_port


def base_config(db_url: str, **sections: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "storage": {"url": db_url},
        "http": {"host": "127.0.0.1", "port": free_port()},
        "outbox": {
            "base_delay_seconds": 0.05,
            "max_delay_seconds": 0.5,
            "poll_interval_seconds": 0.05,
        },
    }
    for name, value in sections.items():
        config[name] = value
    return config


@asynccontextmanager
async def running_kefu(
    config: dict[str, Any],
    env: Mapping[str, str],
    *,
    clock: Callable[[], datetime] | None = None,
) -> AsyncIterator[Kefu]:
    """`clock` replaces the scheduler's and the outbox worker's clock (no real waiting)."""
    kefu = Kefu(parse_config(config), env)
    if clock is not None:
        kefu.scheduler.clock = clock
        kefu.worker.clock = clock
    task = asyncio.create_task(kefu.serve(handle_signals=False))
    while kefu.server is None or not kefu.server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield kefu
    finally:
        kefu.server.should_exit = True
        await task


def url(kefu: Kefu, path: str) -> str:
    return f"http://{kefu.config.http.host}:{kefu.config.http.port}{path}"


def signed(secret: str, payload: Any, *, ts: int | None = None) -> tuple[bytes, dict[str, str]]:
    body = (
        payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False).encode()
    )
    stamp = str(int(time.time()) if ts is None else ts)
    return body, {
        "Content-Type": "application/json",
        "X-Kefu-Timestamp": stamp,
        "X-Kefu-Signature": sign(secret, stamp, body),
    }


async def post_signed(
    client: httpx.AsyncClient, endpoint: str, secret: str, payload: Any, *, ts: int | None = None
) -> httpx.Response:
    body, headers = signed(secret, payload, ts=ts)
    return await client.post(endpoint, content=body, headers=headers)
