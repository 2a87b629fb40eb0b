"""Email ingest benchmark: the same N mixed messages in the same Dovecot, read by
- a bare aioimaplib client (UID FETCH in chunks of 200, as kefu does; nothing done with them),
- kefu (IMAP fetch, MIME parse, charset guess, quote stripping, raw kept on disk, dedupe,
  identify, thread, classify, route, log, commit, \\Seen), SQLite,
- django-helpdesk 2.6.1's `get_email` (its own SQLite database, on Django's defaults and on WAL
  with synchronous=NORMAL as kefu runs SQLite), in a process of its own (bench/helpdesk_peer.py).

Run by hand:  .venv/bin/pip install -e '.[bench]' && .venv/bin/python bench/email_ingest.py
              [--messages 1000] [--rounds 2]

Each run gets a fresh mailbox holding the same N messages; runs alternate (the order reverses
every round) and the best of the rounds is kept. Times are for N messages: django-helpdesk's from
its first ticket row to its last (scaled by N/(N-1)); kefu's, which commits in batches, from its
SELECT to its last commit; the bare fetch's from SELECT to its last byte. Start-up (process and
config, connect, login, select; for django-helpdesk its first message) is printed apart. kefu reads only what arrived after its checkpoint, so it meets the mailbox once while it
is empty (the checkpoint), then the N messages arrive while it is stopped, as after a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aioimaplib import IMAP4  # noqa: E402

from bot.messages import Inbound, Receipt  # noqa: E402
from bot.pipeline import Pipeline  # noqa: E402
from channels.email import ImapReader  # noqa: E402
from tests.servers.dovecot import DovecotServer  # noqa: E402
from tests.servers.kefu import base_config, running_kefu  # noqa: E402
from tests.servers.ports import free_port  # noqa: E402

CHUNK = 200


def message(n: int) -> bytes:
    """Half GBK Chinese (base64, RFC 2047 headers), half English replies with a quote to cut."""
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


@dataclass
class Run:
    startup: float
    first_to_last: float
    rows: int


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


async def bare_fetch(server: DovecotServer, user: str, password: str, n: int) -> Run:
    started = time.perf_counter()
    client = await login(server, user, password)
    await client.select("INBOX")
    ready = time.perf_counter()
    got = 0
    for start in range(1, n + 1, CHUNK):
        response = await client.uid("fetch", f"{start}:{min(start + CHUNK - 1, n)}", "(UID BODY.PEEK[])")
        got += sum(isinstance(line, bytearray) for line in response.lines)
    done = time.perf_counter()
    await client.logout()
    assert got == n, got
    return Run(ready - started, done - ready, got)


class Commits:
    """Times of the pipeline's commits that logged this bench's mail (kefu's own rows, such as
    staff notices or acknowledgements, are not counted: they are not messages read), and when the
    reader had the folder selected. kefu commits in batches, so its clock starts at the SELECT,
    not at its first commit (which already holds up to a whole fetch of messages)."""

    def __init__(self) -> None:
        self.selected: float | None = None
        self.first: float | None = None
        self.last: float | None = None
        self.logged = 0

    def install(self) -> Callable[[], None]:
        original = Pipeline.receive_many
        original_select = ImapReader.select
        commits = self

        async def select(self: ImapReader, client: Any) -> None:
            await original_select(self, client)
            commits.selected = commits.selected or time.perf_counter()

        async def receive_many(self: Pipeline, inbounds: Sequence[Inbound]) -> list[Receipt]:
            receipts = await original(self, inbounds)
            now = time.perf_counter()
            fresh = sum(
                1 for i, r in zip(inbounds, receipts, strict=True)
                if i.channel == "email" and r.status == "accepted" and i.external_id.startswith("bench-")
            )
            if fresh:
                commits.first = commits.first if commits.first is not None else now
                commits.last = now
                commits.logged += fresh
            return receipts

        Pipeline.receive_many = receive_many  # type: ignore[method-assign]
        ImapReader.select = select  # type: ignore[method-assign]

        def undo() -> None:
            Pipeline.receive_many = original  # type: ignore[method-assign]
            ImapReader.select = original_select  # type: ignore[method-assign]

        return undo


KEFU_EXTRA: dict[str, Any] = {}  # config sections to override (--without-insight)


async def kefu_ingest(server: DovecotServer, user: str, password: str, n: int, tmp: Path) -> Run:
    config: dict[str, Any] = base_config(
        f"sqlite+aiosqlite:///{tmp}/kefu.db",
        email={
            "enabled": True, "address": "support@kefu.test", "username": user,
            "imap_host": "127.0.0.1", "imap_port": server.port, "imap_security": "none",
            "smtp_host": "127.0.0.1", "smtp_port": free_port(), "smtp_security": "none",
            "store_dir": str(tmp / "mail"),
        },
        logging={"level": "WARNING"},
    )
    config["outbox"] = {}  # default retry delays: the acknowledgements it queues wait, as in production
    config.update(KEFU_EXTRA)
    env = {"KEFU_EMAIL_PASSWORD": password}
    async with running_kefu(config, env) as kefu:  # the checkpoint, on the empty folder
        await asyncio.wait_for(kefu.channels["email"].reader.connected.wait(), 30)  # type: ignore[attr-defined]
    await append_all(server, user, password, n)
    commits = Commits()
    undo = commits.install()
    try:
        started = time.perf_counter()
        async with running_kefu(config, env):
            deadline = time.monotonic() + 600
            while commits.logged < n:
                assert time.monotonic() < deadline, f"{commits.logged} of {n} logged"
                await asyncio.sleep(0.01)
    finally:
        undo()
    assert commits.selected is not None and commits.last is not None
    return Run(commits.selected - started, commits.last - commits.selected, commits.logged)


def peer(server: DovecotServer, user: str, password: str, tmp: Path, wal: bool) -> Run:
    command = [
        sys.executable, str(ROOT / "bench" / "helpdesk_peer.py"), "--db", str(tmp / "helpdesk.db"),
        "--port", str(server.port), "--user", user, "--password", password,
    ] + (["--wal"] if wal else [])
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"django-helpdesk peer failed: {done.stderr[-2000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    rows = figures["rows"]
    # first row to last covers rows - 1 messages: scaled to all of them, like kefu's clock
    return Run(figures["startup"], figures["first_to_last"] * rows / max(1, rows - 1), rows)


async def one(kind: str, server: DovecotServer, n: int) -> Run:
    user, password = server.new_user()
    with tempfile.TemporaryDirectory(prefix=f"kefu-bench-{kind}-") as name:
        tmp = Path(name)
        if kind == "kefu":
            return await kefu_ingest(server, user, password, n, tmp)
        await append_all(server, user, password, n)
        if kind == "bare":
            return await bare_fetch(server, user, password, n)
        return await asyncio.to_thread(peer, server, user, password, tmp, kind == "peer-wal")


async def main(n: int, rounds: int, only: list[str] | None = None) -> None:
    kinds = [k for k in ["bare", "kefu", "peer-defaults", "peer-wal"] if not only or k in only]
    results: dict[str, list[Run]] = {k: [] for k in kinds}
    server = DovecotServer()
    server.start()
    try:
        for r in range(rounds):
            for kind in kinds if r % 2 == 0 else list(reversed(kinds)):
                run = await one(kind, server, n)
                assert run.rows == n, (kind, run)
                results[kind].append(run)
                print(f"round {r + 1} {kind:14} first->last {run.first_to_last:7.2f} s  start-up {run.startup:5.2f} s",
                      flush=True)
    finally:
        server.stop()
    best = {k: min(v, key=lambda x: x.first_to_last) for k, v in results.items()}
    print(f"\n{n} mixed messages, best of {rounds} alternated rounds")
    print(f"{'reader':34} {'msg/s':>8} {'first->last':>12} {'start-up':>9}")
    label = {
        "bare": "bare aioimaplib fetch (no work)",
        "kefu": "kefu (SQLite)",
        "peer-defaults": "django-helpdesk 2.6.1 (defaults)",
        "peer-wal": "django-helpdesk 2.6.1 (WAL)",
    }
    for kind in kinds:
        run = best[kind]
        print(f"{label[kind]:34} {n / run.first_to_last:8.0f} {run.first_to_last:10.2f} s {run.startup:7.2f} s")
    if "kefu" not in best:
        return
    k = best["kefu"].first_to_last
    if "peer-defaults" in best:
        print(f"\nkefu vs django-helpdesk on its defaults: {best['peer-defaults'].first_to_last / k:5.2f}x (target >= 10x)")
    if "peer-wal" in best:
        print(f"kefu vs django-helpdesk on WAL:          {best['peer-wal'].first_to_last / k:5.2f}x (target >= 5x)")
    if "bare" in best:
        print(f"kefu as a share of the bare fetch:       {best['bare'].first_to_last / k:5.2f}")
    for r in range(rounds):  # each round's own ratios: the same minute, the same machine load
        ratios = [
            f"{name} {results[kind][r].first_to_last / results['kefu'][r].first_to_last:5.2f}x"
            for kind, name in (("peer-defaults", "defaults"), ("peer-wal", "WAL"))
            if kind in results
        ]
        print(f"round {r + 1}: kefu {results['kefu'][r].first_to_last:.2f} s; " + ", ".join(ratios))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=["bare", "kefu", "peer-defaults", "peer-wal"])
    parser.add_argument(
        "--without-insight", action="store_true",
        help="kefu with [insight] off: how much of its time is the per-message customer-health score",
    )
    args = parser.parse_args()
    if args.without_insight:
        KEFU_EXTRA["insight"] = {"enabled": False}
    asyncio.run(main(args.messages, args.rounds, args.only))
