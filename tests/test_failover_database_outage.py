"""Three `kefu run` processes on one PostgreSQL that goes away in the middle of the load (stopped
as a crash would, then started again): no process exits, leadership comes back within the bound
the README states, and every Telegram update and mail is logged once and acknowledged once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from storage.db import Database
from storage.models import OutboxRow
from tests.channels.email_fixtures import Mailbox, dovecot  # noqa: F401 - fixture
from tests.channels.email_fixtures import mailbox as mailbox  # fixture
from tests.servers.botapi import TOKEN, BotApiServer
from tests.servers.ports import free_port
from tests.servers.postgres import PostgresServer
from tests.servers.process import KefuProcess
from tests.servers.smtp import SmtpServer
from tests.test_failover import TICK, config, counts, eventually, lines, mail, update

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

UPDATES = 120
MAILS = 40
OUTAGE_SECONDS = 4
LEASE_SECONDS = 40


def pg_ctl(server: PostgresServer, *args: str) -> None:
    server._run(str(server.bindir / "pg_ctl"), "-D", str(server.data), *args)


def restart(server: PostgresServer) -> None:
    opts = f"-p {server.port} -k {server.tmp} -c listen_addresses=127.0.0.1 {server.options}"
    pg_ctl(server, "-l", str(server.tmp / "server.log"), "-w", "-o", opts, "start")


async def test_a_database_outage_loses_nothing_and_doubles_nothing(
    tmp_path: Path, mailbox: Mailbox
) -> None:
    # Its own server (this test stops it), durable as users run it: the tests' shared server
    # turns synchronous_commit off, and a crash of that one loses the last commits.
    server = PostgresServer(options="-c fsync=off -c max_connections=200")
    server.start()
    smtp = SmtpServer()
    smtp.start()
    url = server.create_database()
    db = Database(url)
    async with BotApiServer() as botapi, contextlib.AsyncExitStack() as stack:
        stack.callback(server.stop)
        stack.callback(smtp.stop)
        processes = []
        for n in (1, 2, 3):
            port = free_port()
            # A lease longer than the outage, as by default (120 s): a worker that sent a message
            # while the database was away records it when the database is back.
            (tmp_path / f"kefu{n}.toml").write_text(
                config(url, port, botapi, mailbox, smtp, tmp_path / "mail").replace(
                    "lease_seconds = 6", f"lease_seconds = {LEASE_SECONDS}"
                )
            )
            env = {"KEFU_TELEGRAM_TOKEN": TOKEN, "KEFU_EMAIL_PASSWORD": mailbox.password}
            processes.append(KefuProcess(tmp_path, port, env, f"kefu{n}.toml"))
        for p in processes:
            p.start()
            stack.callback(p.ensure_stopped)
        await asyncio.gather(*(p.ready(timeout=60) for p in processes))
        await eventually(lambda: any(lines(p, "email.imap.connected") for p in processes), 20,
                         "a folder reader")

        for n in range(UPDATES // 2):
            botapi.push(update(n))
        await mailbox.append(*(mail(n) for n in range(MAILS // 2)))
        await eventually(lambda: botapi.pending() < UPDATES // 2 - 20, 30, "polling to start")

        # The database goes away as a crash would, with the load still coming in.
        await db.dispose()
        pg_ctl(server, "-m", "immediate", "-w", "stop")
        for n in range(UPDATES // 2, UPDATES):
            botapi.push(update(n))
        await mailbox.append(*(mail(n) for n in range(MAILS // 2, MAILS)))
        await asyncio.sleep(OUTAGE_SECONDS)  # the outage itself, not a proof of anything
        assert all(p.proc is not None and p.proc.poll() is None for p in processes), [
            p.log.read_text(errors="replace")[-3000:] for p in processes
        ]
        elected_before = sum(
            len(lines(p, "leader.elected singleton=telegram.poll")) for p in processes
        )
        restart(server)
        back_at = time.monotonic()

        # Leadership comes back (the README: about 1 s after the server is back, plus the start
        # of the work itself).
        await eventually(
            lambda: sum(len(lines(p, "leader.elected singleton=telegram.poll")) for p in processes)
            > elected_before,
            15, "a poller to be elected again",
        )
        assert time.monotonic() - back_at < 15
        await eventually(lambda: botapi.pending() == 0, 90, "every update to be confirmed")

        deadline = time.monotonic() + 90
        while await counts(db) != {"telegram": UPDATES, "email": MAILS}:
            assert time.monotonic() < deadline, await counts(db)
            await asyncio.sleep(0.3)

        def acks_sent() -> bool:
            return (len({s.chat_id for s in botapi.sent}) == UPDATES
                    and len({r.recipients[0] for r in smtp.handler.delivered}) == MAILS)

        await eventually(acks_sent, 90, "every acknowledgement")

        async def statuses() -> Counter[str]:
            async with db.sessions() as s:
                return Counter(await s.scalars(select(OutboxRow.status)))

        # Every row says "sent" well within the lease: none waits for its lease to run out.
        deadline = time.monotonic() + LEASE_SECONDS / 2
        while (found := await statuses()) != {"sent": UPDATES + MAILS}:
            assert time.monotonic() < deadline, found
            await asyncio.sleep(0.3)
        telegram_twice = {c for c, k in Counter(s.chat_id for s in botapi.sent).items() if k > 1}
        mail_twice = {a for a, k in Counter(r.recipients[0] for r in smtp.handler.delivered).items()
                      if k > 1}
        # No process died: a send made while the database was away is recorded when it is back,
        # never made again.
        assert telegram_twice == set() and mail_twice == set(), (telegram_twice, mail_twice)

        ticks = Counter(
            m.groups() for p in processes for line in lines(p, "scheduler.tick ")
            if (m := TICK.search(line))
        )
        assert ticks and max(ticks.values()) == 1, [t for t, k in ticks.items() if k > 1]
        # Nothing of what customers wrote reached the logs while the database was down.
        for p in processes:
            text = p.log.read_text(errors="replace")
            assert "包裹丢了" not in text and "Traceback" not in text, text[-3000:]
        await db.dispose()
        assert [p.terminate() for p in processes] == [0, 0, 0]
