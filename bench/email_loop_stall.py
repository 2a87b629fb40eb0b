"""The event loop's longest stall while kefu ingests one 5 MB mail: webhooks, Telegram and the
outbox share that loop, so one large mail must not hold it (target: under 50 ms).

Run by hand:  .venv/bin/python bench/email_loop_stall.py

A ticker sleeps 1 ms at a time on kefu's loop and records the longest gap beyond that, from the
moment the mail is appended to Dovecot until it is in the log. Two mails: a short text with a 5 MB
attachment (the usual large mail: photos, PDFs) and a 5 MB HTML newsletter. Baselines in the same
run: the same mail parsed by calling the converter on the loop itself, as kefu did before; and a
1 KB mail through the same kefu just before (what any one message costs the loop: the pipeline
writes a message's transaction on the loop). A first mail warms kefu up (SQL statements compiled
once per process) and is not counted. While the large mail is ingested, another process POSTs a
webhook message every 20 ms and reports the slowest answer, against the slowest while idle.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import select  # noqa: E402

from channels.email import MailStore, to_inbound  # noqa: E402
from storage.models import Interaction  # noqa: E402
from tests.servers.dovecot import DovecotServer  # noqa: E402
from tests.servers.kefu import base_config, running_kefu  # noqa: E402
from tests.servers.ports import free_port  # noqa: E402

SIZE = 5 * 1024 * 1024
SECRET = "stall-bench-secret"


def small_mail(n: int) -> bytes:
    return (
        f"From: Small Sender <small{n}@example.com>\r\nTo: support@kefu.test\r\n"
        f"Subject: order {n}\r\nMessage-ID: <small-{n}@example.com>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        + "Where is my order? It was due last week.\r\n" * 25
    ).encode()


def with_attachment(n: int) -> tuple[bytes, str]:
    data = base64.encodebytes(os.urandom(SIZE * 3 // 4)).replace(b"\n", b"\r\n")
    return (
        f"From: Big Sender <big{n}@example.com>\r\nTo: support@kefu.test\r\nSubject: photos {n}\r\n"
        f"Message-ID: <big-{n}@example.com>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        "Content-Type: text/plain; charset=utf-8\r\n\r\nThe photos of the broken parcel.\r\n--b\r\n"
        'Content-Type: image/jpeg\r\nContent-Disposition: attachment; filename="parcel.jpg"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + data + b"\r\n--b--\r\n", f"big-{n}@example.com"


def html_newsletter(n: int) -> tuple[bytes, str]:
    row = "<tr><td><p>Item <b>{i}</b></p></td><td><a href='https://shop.example/{i}'>link</a></td></tr>\r\n"
    rows, size, i = [], 0, 0
    while size < SIZE:
        line = row.format(i=i)
        rows.append(line)
        size += len(line)
        i += 1
    return (
        f"From: Shop <news{n}@example.com>\r\nTo: support@kefu.test\r\nSubject: catalogue {n}\r\n"
        f"Message-ID: <html-{n}@example.com>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/html; charset=utf-8\r\n\r\n<html><body><table>\r\n"
    ).encode() + "".join(rows).encode() + b"</table></body></html>\r\n", f"html-{n}@example.com"


class Ticker:
    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            self.worst = max(self.worst, time.perf_counter() - before - 0.001)

    def __enter__(self) -> Ticker:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._task is not None
        self._task.cancel()


@dataclass
class Measured:
    stall: float  # the large mail's
    small_stall: float  # a 1 KB mail's, same kefu
    webhook_worst: float  # slowest webhook answer while the large mail was ingested
    webhook_idle: float  # slowest while nothing else happened
    webhook_count: int


async def append_and_wait(
    kefu: Any, port: int, user: str, password: str, raw: bytes, msgid: str
) -> float:
    # APPEND from another process, so that the appending client is not on kefu's loop
    appended = await asyncio.create_subprocess_exec(
        sys.executable, "-c", APPEND, str(port), user, password, stdin=asyncio.subprocess.PIPE
    )
    with Ticker() as ticker:
        await appended.communicate(raw)
        deadline = time.monotonic() + 120
        while True:
            async with kefu.db.sessions() as session:
                found = await session.scalar(
                    select(Interaction.id).where(Interaction.external_id == msgid)
                )
            if found is not None:
                break
            assert time.monotonic() < deadline, "the mail was not logged"
            await asyncio.sleep(0.01)
    return ticker.worst


class Poster:
    """Another process POSTing webhook messages every 20 ms: the customer-facing view of a stall."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Poster:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", POST, str(self.port), SECRET, str(ROOT),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        await self.proc.stdout.readline()  # "ready": the first answer came back
        return self

    async def stop(self) -> list[float]:
        assert self.proc is not None
        out, _ = await self.proc.communicate(b"stop\n")
        return [float(x) for x in out.split()]

    async def __aexit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def through_kefu(
    server: DovecotServer, make: Callable[[int], tuple[bytes, str]], n: int
) -> Measured:
    user, password = server.new_user()
    with tempfile.TemporaryDirectory(prefix="kefu-stall-") as tmp:
        config = base_config(
            f"sqlite+aiosqlite:///{tmp}/kefu.db",
            email={
                "enabled": True, "address": "support@kefu.test", "username": user,
                "imap_host": "127.0.0.1", "imap_port": server.port, "imap_security": "none",
                "smtp_host": "127.0.0.1", "smtp_port": free_port(), "smtp_security": "none",
                "store_dir": str(Path(tmp) / "mail"), "poll_interval_seconds": 0.2,
            },
            webhook={"sources": {"shop": {"secret_env": "SHOP_SECRET"}}},
            logging={"level": "ERROR"},
        )
        env = {"KEFU_EMAIL_PASSWORD": password, "SHOP_SECRET": SECRET}
        async with running_kefu(config, env) as kefu:
            await asyncio.wait_for(kefu.channels["email"].reader.connected.wait(), 30)  # type: ignore[attr-defined]
            await asyncio.sleep(0.5)
            port = kefu.config.http.port
            for k in (2 * n, 2 * n + 1):  # the first warms kefu up
                small = await append_and_wait(
                    kefu, server.port, user, password, small_mail(k), f"small-{k}@example.com"
                )
            async with Poster(port) as idle:
                await asyncio.sleep(1.0)
                idle_latencies = await idle.stop()
            raw, msgid = make(2 * n)
            stall = await append_and_wait(kefu, server.port, user, password, raw, msgid)
            # A second copy with webhooks arriving meanwhile: their own transactions also run on
            # the loop, so the stall above is measured without them.
            raw, msgid = make(2 * n + 1)
            async with Poster(port) as poster:
                await append_and_wait(kefu, server.port, user, password, raw, msgid)
                latencies = await poster.stop()
            return Measured(
                stall, small, max(latencies, default=0.0), max(idle_latencies, default=0.0),
                len(latencies),
            )


POST = """
import http.client, json, select, sys, time, uuid
sys.path.insert(0, sys.argv[3])
from channels.webhook import sign
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=60)
latencies = []
while True:
    message = {"id": uuid.uuid4().hex, "user": {"id": "u-1"}, "text": "包裹还没到"}
    body = json.dumps(message).encode()
    stamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "X-Kefu-Timestamp": stamp,
               "X-Kefu-Signature": sign(sys.argv[2], stamp, body)}
    before = time.perf_counter()
    conn.request("POST", "/webhooks/shop", body, headers)
    answer = conn.getresponse()
    answer.read()
    assert answer.status < 300, answer.status
    if not latencies:
        print("ready", flush=True)
    latencies.append(time.perf_counter() - before)
    if select.select([sys.stdin], [], [], 0.02)[0]:
        break
print(" ".join(f"{x:.6f}" for x in latencies[1:]))
"""


APPEND = """
import imaplib, sys
client = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]))
client.login(sys.argv[2], sys.argv[3])
client.append("INBOX", None, None, sys.stdin.buffer.read())
client.logout()
"""


async def on_the_loop(raw: bytes) -> float:
    with tempfile.TemporaryDirectory(prefix="kefu-stall-") as tmp, Ticker() as ticker:
        await asyncio.sleep(0.01)
        to_inbound(raw, MailStore(tmp, 25 * 1024 * 1024), own_address="support@kefu.test")
        await asyncio.sleep(0.01)
        return ticker.worst


async def main() -> None:
    server = DovecotServer()
    server.start()
    try:
        for n, (label, make) in enumerate((
            ("text + 5 MB attachment", with_attachment),
            ("5 MB HTML body", html_newsletter),
        )):
            raw, _ = make(99)
            baseline = await on_the_loop(raw)
            kefu = await through_kefu(server, make, n)
            print(
                f"{label:24} {len(raw) / 1e6:5.1f} MB: longest loop stall in kefu "
                f"{kefu.stall * 1000:6.1f} ms (target < 50; a 1 KB mail "
                f"{kefu.small_stall * 1000:.1f} ms); parsed on the loop instead "
                f"{baseline * 1000:6.1f} ms; slowest of {kefu.webhook_count} webhook answers "
                f"meanwhile {kefu.webhook_worst * 1000:.1f} ms "
                f"(idle {kefu.webhook_idle * 1000:.1f} ms)"
            )
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
