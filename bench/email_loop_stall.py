"""The event loop's longest stall while kefu ingests one 5 MB mail: webhooks, Telegram and the
outbox share that loop, so one large mail must not hold it (target: under 50 ms).

Run by hand:  .venv/bin/python bench/email_loop_stall.py

A ticker sleeps 1 ms at a time on kefu's loop and records the longest gap beyond that, from the
moment the mail is appended to Dovecot until it is in the log. Two mails: a short text with a 5 MB
attachment (the usual large mail: photos, PDFs) and a 5 MB HTML newsletter. Baseline in the same
run: the same mail parsed by calling the converter on the loop itself, as kefu did before.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from channels.email import MailStore, to_inbound  # noqa: E402
from tests.servers.dovecot import DovecotServer  # noqa: E402
from tests.servers.kefu import base_config, running_kefu  # noqa: E402
from tests.servers.ports import free_port  # noqa: E402

SIZE = 5 * 1024 * 1024


def with_attachment(n: int) -> bytes:
    data = base64.encodebytes(os.urandom(SIZE * 3 // 4)).replace(b"\n", b"\r\n")
    return (
        f"From: Big Sender <big{n}@example.com>\r\nTo: support@kefu.test\r\nSubject: photos {n}\r\n"
        f"Message-ID: <big-{n}@example.com>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        "Content-Type: text/plain; charset=utf-8\r\n\r\nThe photos of the broken parcel.\r\n--b\r\n"
        'Content-Type: image/jpeg\r\nContent-Disposition: attachment; filename="parcel.jpg"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + data + b"\r\n--b--\r\n"


def html_newsletter(n: int) -> bytes:
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
    ).encode() + "".join(rows).encode() + b"</table></body></html>\r\n"


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


async def through_kefu(server: DovecotServer, raw: bytes, msgid: str) -> float:
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
            logging={"level": "WARNING"},
        )
        async with running_kefu(config, {"KEFU_EMAIL_PASSWORD": password}) as kefu:
            await asyncio.wait_for(kefu.channels["email"].reader.connected.wait(), 30)  # type: ignore[attr-defined]
            await asyncio.sleep(0.5)
            # APPEND from another process, so that the appending client is not on kefu's loop
            appended = await asyncio.create_subprocess_exec(
                sys.executable, "-c", APPEND, str(server.port), user, password,
                stdin=asyncio.subprocess.PIPE,
            )
            with Ticker() as ticker:
                await appended.communicate(raw)
                deadline = time.monotonic() + 120
                while True:
                    async with kefu.db.sessions() as session:
                        from sqlalchemy import select

                        from storage.models import Interaction

                        found = await session.scalar(
                            select(Interaction.id).where(Interaction.external_id == msgid)
                        )
                    if found is not None:
                        break
                    assert time.monotonic() < deadline, "the mail was not logged"
                    await asyncio.sleep(0.01)
            return ticker.worst


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
        for label, raw, msgid in (
            ("text + 5 MB attachment", with_attachment(1), "big-1@example.com"),
            ("5 MB HTML body", html_newsletter(1), "html-1@example.com"),
        ):
            baseline = await on_the_loop(raw)
            kefu = await through_kefu(server, raw, msgid)
            print(
                f"{label:24} {len(raw) / 1e6:5.1f} MB: longest loop stall in kefu "
                f"{kefu * 1000:6.1f} ms "
                f"(target < 50); parsed on the loop instead {baseline * 1000:6.1f} ms"
            )
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
