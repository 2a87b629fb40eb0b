"""Leader election for the parts of kefu that must run in one process only.

Singletons: the Telegram getUpdates loop, each IMAP folder's reader and each scheduled job. Webhook
ingress, Telegram webhook mode and the outbox worker run in every process and are not elected.

On PostgreSQL each singleton is a session-level advisory lock held on one dedicated connection per
process (not a pooled one, so no transaction and no pool recycling touches it). Why locks and not a
lease row with heartbeats:
- a process that dies (kill -9, OOM, a crashed machine whose kernel still answers) closes its
  socket, and PostgreSQL releases its locks at once: the next process takes over at its next try
  (every RETRY_SECONDS), where a lease would have to run out first;
- nothing is written per heartbeat, and no clock is compared between machines.
A connection that goes silent without closing (a cable pulled, a frozen VM) is what TCP keepalive
is for: the session asks the server to probe an idle client after KEEPALIVE_IDLE s and to give up
after KEEPALIVE_COUNT failed probes KEEPALIVE_INTERVAL s apart (tcp_user_timeout does the same for
unacknowledged data), so the server frees the locks within about SERVER_GIVES_UP s. The leader
itself checks its connection every RETRY_SECONDS with a QUERY_TIMEOUT bound and steps down as soon
as a check fails, which is sooner than the server frees the lock: when the network fails, the old
leader has stopped before a new one can start. When the server ends the session itself (a restart,
pg_terminate_backend) the lock is free at once and the old leader learns it at its next check, up
to RETRY_SECONDS later; that overlap is what the idempotency keys are for (the log's unique
external ids, the scheduler's tick keys, Telegram's own 409 to a second poller).

On SQLite kefu runs as one process: every singleton is held from the start, nothing is polled.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import socket
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import URL

from storage.outage import log_failure

log = logging.getLogger("kefu.leader")

Callback = Callable[[], Awaitable[None]]

RETRY_SECONDS = 1.0
QUERY_TIMEOUT = 2.0
KEEPALIVE_IDLE = 2
KEEPALIVE_INTERVAL = 1
KEEPALIVE_COUNT = 3
SERVER_GIVES_UP = KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT  # seconds
# Advisory locks are two int4 keys: kefu's class (the same "kefu" as the migration lock, which
# uses the one-bigint form and so cannot collide), and a checksum of the singleton's name.
LOCK_CLASS = 0x6B656675
SQLALCHEMY_ONLY = {
    "prepared_statement_cache_size", "prepared_statement_name_func", "async_fallback",
}


def lock_key(name: str) -> int:
    """A stable int4 for a singleton name (the same in every process and every release)."""
    value = zlib.crc32(name.encode())
    return value - 2**32 if value >= 2**31 else value


def describe_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Singleton:
    name: str
    on_elected: Callback | None = None
    on_deposed: Callback | None = None
    held: bool = False


class Election(abc.ABC):
    """The singletons this process would lead, and which of them it leads now."""

    def __init__(self) -> None:
        self.singletons: dict[str, Singleton] = {}

    def join(
        self, name: str, *, on_elected: Callback | None = None, on_deposed: Callback | None = None
    ) -> None:
        """Stand for `name`; call before start(). `on_elected` starts the singleton's work and
        `on_deposed` stops it; both must return quickly (start a task, cancel a task)."""
        self.singletons[name] = Singleton(name, on_elected, on_deposed)

    def holds(self, name: str) -> bool:
        singleton = self.singletons.get(name)
        return singleton is not None and singleton.held

    @abc.abstractmethod
    async def start(self) -> None:
        """Begin standing for every joined singleton."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Step down from everything held and stop standing."""

    async def _elected(self, singleton: Singleton) -> None:
        singleton.held = True
        log.info("leader.elected singleton=%s process=%s", singleton.name, describe_process())
        if singleton.on_elected is not None:
            try:
                await singleton.on_elected()
            except Exception as exc:  # noqa: BLE001 - the singleton logs its own failures; the election goes on
                log_failure(log, "leader.start.failure", exc, f"singleton={singleton.name}")

    async def _deposed(self, singleton: Singleton, reason: str) -> None:
        if not singleton.held:
            return
        singleton.held = False
        log.warning("leader.deposed singleton=%s reason=%s", singleton.name, reason)
        if singleton.on_deposed is not None:
            try:
                await singleton.on_deposed()
            except Exception as exc:  # noqa: BLE001 - logged; the next round tries again
                log_failure(log, "leader.stop.failure", exc, f"singleton={singleton.name}")


class SoleProcess(Election):
    """SQLite: this is the only process, so it leads everything from the start."""

    def holds(self, name: str) -> bool:
        return True

    async def start(self) -> None:
        for singleton in self.singletons.values():
            singleton.held = True
            if singleton.on_elected is not None:
                await singleton.on_elected()

    async def stop(self) -> None:
        for singleton in self.singletons.values():
            if singleton.held and singleton.on_deposed is not None:
                await singleton.on_deposed()
            singleton.held = False


class AdvisoryLocks(Election):
    """PostgreSQL: one session advisory lock per singleton on a dedicated asyncpg connection."""

    def __init__(self, url: URL, *, retry_seconds: float = RETRY_SECONDS) -> None:
        super().__init__()
        # SQLAlchemy's own URL options mean nothing to a plain asyncpg connection.
        query = {k: v for k, v in url.query.items() if k not in SQLALCHEMY_ONLY}
        plain = url.set(drivername="postgresql", query=query)
        self.dsn = plain.render_as_string(hide_password=False)
        self.retry_seconds = retry_seconds
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        # The first round runs before start() returns, so that a lone process is the leader of
        # everything before it serves (as on SQLite); later rounds run in the background.
        await self._round()
        self._task = asyncio.create_task(self._loop(), name="kefu-leader")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for singleton in self.singletons.values():
            await self._deposed(singleton, "stopping")
        await self._close()

    async def _loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.retry_seconds)
            await self._round()

    async def _round(self) -> None:
        """Checks the connection (the heartbeat) and tries every lock not held yet."""
        if not self.singletons:
            return
        try:
            if self._conn is None:
                self._conn = await asyncio.wait_for(self._connect(), QUERY_TIMEOUT)
            await asyncio.wait_for(self._conn.fetchval("SELECT 1"), QUERY_TIMEOUT)
            for singleton in self.singletons.values():
                if singleton.held or self._stopping:
                    continue
                got = await asyncio.wait_for(
                    self._conn.fetchval(
                        "SELECT pg_try_advisory_lock($1, $2)", LOCK_CLASS, lock_key(singleton.name)
                    ),
                    QUERY_TIMEOUT,
                )
                if got:
                    await self._elected(singleton)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the connection ends leadership
            held = [s for s in self.singletons.values() if s.held]
            log.warning(
                "leader.connection.failure error=%s held=%d: %s",
                type(exc).__name__,
                len(held),
                "stepping down; retrying" if held else "retrying",
            )
            for singleton in held:
                await self._deposed(singleton, "database connection lost")
            await self._close()

    async def _connect(self) -> Any:
        import asyncpg  # type: ignore[import-untyped]  # PostgreSQL only; no stubs

        return await asyncpg.connect(
            self.dsn,
            server_settings={
                "application_name": f"kefu-leader {describe_process()}"[:63],
                "tcp_keepalives_idle": str(KEEPALIVE_IDLE),
                "tcp_keepalives_interval": str(KEEPALIVE_INTERVAL),
                "tcp_keepalives_count": str(KEEPALIVE_COUNT),
                "tcp_user_timeout": str(SERVER_GIVES_UP * 1000),
            },
        )

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # terminate, not close: a connection that just failed may not answer a goodbye, and
            # closing the socket is what releases the locks on the server.
            conn.terminate()


def election_for(url: URL) -> Election:
    return SoleProcess() if url.get_backend_name() == "sqlite" else AdvisoryLocks(url)
