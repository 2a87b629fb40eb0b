"""/telegram/webhook on a real `kefu run` process: the secret token is checked before the body is
read, and the body is read in a stream with the webhook channel's size limit. Memory is measured
on the server process itself (its peak resident set, VmHWM)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.servers.botapi import TOKEN, BotApiServer, fixture
from tests.servers.ports import free_port
from tests.servers.process import KefuProcess

SECRET = "s3cret-token_1"
MIB = 1024 * 1024


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


async def chunked_post(
    port: int, headers: dict[str, str], total: int, chunk: int = 64 * 1024
) -> int:
    """POSTs `total` bytes with chunked transfer encoding, stopping as soon as the server answers
    (or hangs up); returns the HTTP status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(
        f"POST /telegram/webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Transfer-Encoding: chunked\r\n{head}\r\n".encode()
    )
    answer = asyncio.create_task(reader.readline())
    block = b"7" * chunk
    sent = 0
    try:
        while sent < total and not answer.done():
            writer.write(f"{len(block):x}\r\n".encode() + block + b"\r\n")
            sent += len(block)
            await writer.drain()
        if not answer.done():
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except ConnectionError:
        pass  # the server answered and hung up on the rest: that is the point
    status_line = await asyncio.wait_for(answer, 30)
    writer.close()
    return int(status_line.split()[1])


@pytest.fixture
async def kefu_process(tmp_path: Path) -> AsyncIterator[KefuProcess]:
    port = free_port()
    async with BotApiServer() as botapi:
        (tmp_path / "config.toml").write_text(
            f"""
[storage]
url = "sqlite+aiosqlite:///{tmp_path}/kefu.db"
[http]
port = {port}
[telegram]
enabled = true
mode = "webhook"
base_url = "{botapi.base_url}"
"""
        )
        kefu = KefuProcess(
            tmp_path, port, {"KEFU_TELEGRAM_TOKEN": TOKEN, "KEFU_TELEGRAM_WEBHOOK_SECRET": SECRET}
        )
        kefu.start()
        try:
            await kefu.ready()
            yield kefu
        finally:
            kefu.ensure_stopped()


@pytest.mark.parametrize(
    ("secret", "status"),
    [("wrong", 403), (None, 403), (SECRET, 413)],
    ids=["wrong", "missing", "right"],
)
async def test_100_mib_chunked_post_is_refused_without_reading_it(
    kefu_process: KefuProcess, secret: str | None, status: int
) -> None:
    assert kefu_process.proc is not None
    pid = kefu_process.proc.pid
    headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret else {}
    # A small update first, so what the first request costs is in the baseline.
    small = status if secret != SECRET else 400  # the right secret: read, and not JSON
    assert await chunked_post(kefu_process.port, headers, 1024) == small
    before = peak_rss_kib(pid)
    assert await chunked_post(kefu_process.port, headers, 100 * MIB) == status
    growth = peak_rss_kib(pid) - before
    assert growth < 10 * 1024, f"peak RSS grew by {growth} KiB"


async def test_an_update_within_the_limit_is_still_taken(kefu_process: KefuProcess) -> None:
    import httpx

    body = json.dumps(fixture("message__private_text")).encode()
    async with httpx.AsyncClient() as client:
        r = await client.post(
            f"http://127.0.0.1:{kefu_process.port}/telegram/webhook", content=body,
            headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
        )
    assert r.status_code == 200, r.text
