"""Email ingest benchmark: N messages appended to a real Dovecot, time until all are in the log.

Run by hand:  .venv/bin/python bench/email_ingest.py [--messages 1000]

Baseline, in the same run against the same mailbox: a bare aioimaplib client fetching the same N
messages (UID FETCH in chunks of 200, as kefu does) and doing nothing with them. Then kefu: IMAP
fetch, MIME parse, quote stripping, raw kept on disk, dedupe, identify, thread, log, commit, \\Seen.
Prints messages/s for each and kefu as a share of the bare fetch.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aioimaplib import IMAP4  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from storage.models import Interaction  # noqa: E402
from tests.servers.dovecot import DovecotServer  # noqa: E402
from tests.servers.kefu import base_config, running_kefu  # noqa: E402
from tests.servers.ports import free_port  # noqa: E402

CHUNK = 200


def message(n: int) -> bytes:
    if n % 2:
        body = base64.b64encode(f"您好，订单 {n} 还没有发货，请帮忙查一下。谢谢！".encode("gbk")).decode()
        return (
            f"From: =?GBK?B?{base64.b64encode('顾客'.encode('gbk')).decode()}?= <c{n % 200}@example.cn>\r\n"
            f"To: support@kefu.test\r\nSubject: =?GBK?B?{base64.b64encode(f'订单 {n}'.encode('gbk')).decode()}?=\r\n"
            f"Message-ID: <bench-{n}@example.cn>\r\nDate: Mon, 1 Apr 2024 10:00:00 +0800\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=GB2312\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n{body}\r\n"
        ).encode()
    return (
        f"From: Customer <c{n % 200}@example.com>\r\nTo: support@kefu.test\r\n"
        f"Subject: Re: order {n}\r\nMessage-ID: <bench-{n}@example.com>\r\n"
        f"In-Reply-To: <kefu.{n}@kefu.test>\r\nDate: Mon, 1 Apr 2024 10:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Order {n} has not arrived yet, please check.\r\n\r\n"
        "On Mon, Apr 1, 2024 at 9:00 AM Support <support@kefu.test> wrote:\r\n> How can we help?\r\n"
    ).encode()


async def login(server: DovecotServer, user: str, password: str) -> IMAP4:
    client = IMAP4("127.0.0.1", server.port, timeout=60)
    await client.wait_hello_from_server()
    await client.login(user, password)
    return client


async def append_all(server: DovecotServer, user: str, password: str, n: int) -> None:
    client = await login(server, user, password)
    for i in range(n):
        response = await client.append(message(i), mailbox="INBOX")
        assert response.result == "OK", response
    await client.logout()


async def bare_fetch(server: DovecotServer, user: str, password: str, n: int) -> float:
    started = time.perf_counter()
    client = await login(server, user, password)
    await client.select("INBOX")
    got = 0
    for start in range(1, n + 1, CHUNK):
        response = await client.uid("fetch", f"{start}:{min(start + CHUNK - 1, n)}", "(UID BODY.PEEK[])")
        got += sum(isinstance(line, bytearray) for line in response.lines)
    await client.logout()
    assert got == n, got
    return time.perf_counter() - started


async def kefu_ingest(server: DovecotServer, user: str, password: str, n: int, tmp: Path) -> float:
    config = base_config(
        f"sqlite+aiosqlite:///{tmp}/kefu.db",
        email={
            "enabled": True, "address": "support@kefu.test", "username": user,
            "imap_host": "127.0.0.1", "imap_port": server.port, "imap_security": "none",
            "smtp_host": "127.0.0.1", "smtp_port": free_port(), "smtp_security": "none",
            "store_dir": str(tmp / "mail"),
        },
    )
    started = time.perf_counter()
    async with running_kefu(config, {"KEFU_EMAIL_PASSWORD": password}) as kefu:
        while True:
            async with kefu.db.sessions() as session:
                count = await session.scalar(select(func.count()).select_from(Interaction))
            if count == n:
                return time.perf_counter() - started
            await asyncio.sleep(0.02)


async def main(n: int) -> None:
    server = DovecotServer()
    server.start()
    try:
        user, password = server.new_user()
        await append_all(server, user, password, n)
        bare = await bare_fetch(server, user, password, n)
        with tempfile.TemporaryDirectory(prefix="kefu-bench-") as tmp:
            took = await kefu_ingest(server, user, password, n, Path(tmp))
    finally:
        server.stop()
    print(f"messages: {n}")
    print(f"bare aioimaplib fetch:  {n / bare:8.0f} messages/s  ({bare:.2f} s)")
    print(f"kefu email ingest:      {n / took:8.0f} messages/s  ({took:.2f} s, start-up included)")
    print(f"kefu / bare fetch:      {bare / took:8.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main(args.messages))
