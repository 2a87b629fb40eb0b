"""A TCP proxy in front of PostgreSQL that counts round trips, for bench/ingest_scale.py --trips.

Reads the wire protocol in both directions without changing a byte: every ReadyForQuery ('Z')
the server sends ends one round trip (asyncpg ends each prepare, execute and pipelined
executemany with one Sync); the client's Parse ('P') messages are statement preparations, and
the server's CommandComplete ('C') tags count the statements run and the transactions committed.
Runs in its own thread with its own event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from dataclasses import dataclass, field

SSL_REQUEST = 80877103


@dataclass
class Counts:
    round_trips: int = 0
    parses: int = 0
    commits: int = 0
    statements: Counter[str] = field(default_factory=Counter)  # CommandComplete tag -> count
    # The statement's text (its start) -> times run (Bind), and -> round trips that ran it first
    executed: Counter[str] = field(default_factory=Counter)
    trips_by: Counter[str] = field(default_factory=Counter)

    def minus(self, before: Counts) -> Counts:
        return Counts(
            self.round_trips - before.round_trips,
            self.parses - before.parses,
            self.commits - before.commits,
            self.statements - before.statements,
            self.executed - before.executed,
            self.trips_by - before.trips_by,
        )


class _Stream:
    """Splits one direction of the protocol into messages; `typed` is False for the client's
    first messages (SSLRequest, StartupMessage), which have no type byte."""

    def __init__(self, server: bool) -> None:
        self.buf = bytearray()
        self.server = server
        self.untyped = not server  # the client starts with untyped messages
        self.ssl_answer = server  # the server answers an SSLRequest with one bare byte

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        self.buf += data
        out: list[tuple[str, bytes]] = []
        while True:
            if self.ssl_answer:
                # The server's answer to an SSLRequest is one bare byte ('N': no SSL); its first
                # typed message otherwise is Authentication ('R') or an error ('E').
                if not self.buf:
                    return out
                if bytes(self.buf[:1]) in (b"N", b"S"):
                    del self.buf[:1]
                self.ssl_answer = False
            if self.untyped:
                if len(self.buf) < 8:
                    return out
                length = int.from_bytes(self.buf[:4], "big")
                if len(self.buf) < length:
                    return out
                code = int.from_bytes(self.buf[4:8], "big")
                del self.buf[:length]
                if code != SSL_REQUEST:
                    self.untyped = False  # the StartupMessage: typed from here on
                continue
            if len(self.buf) < 5:
                return out
            length = int.from_bytes(self.buf[1:5], "big")
            if len(self.buf) < 1 + length:
                return out
            kind = chr(self.buf[0])
            out.append((kind, bytes(self.buf[5 : 1 + length])))
            del self.buf[: 1 + length]


class TripCounter:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.counts = Counts()
        self._names: dict[tuple[int, str], str] = {}  # (connection, prepared name) -> text
        self._trip: dict[int, str] = {}  # connection -> the first statement of its open trip
        self.port = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> int:
        self._thread.start()
        self._ready.wait()
        return self.port

    def snapshot(self) -> Counts:
        with self._lock:
            c = self.counts
            return Counts(
                c.round_trips, c.parses, c.commits, Counter(c.statements), Counter(c.executed),
                Counter(c.trips_by),
            )

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        conn = id(writer)
        await asyncio.gather(
            self._pipe(reader, up_writer, _Stream(server=False), conn),
            self._pipe(up_reader, writer, _Stream(server=True), conn),
            return_exceptions=True,
        )

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        stream: _Stream,
        conn: int,
    ) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                messages = stream.feed(data)
                with self._lock:
                    for kind, body in messages:
                        self._count(stream.server, kind, body, conn)
                await writer.drain()
        finally:
            writer.close()

    def _count(self, server: bool, kind: str, body: bytes, conn: int) -> None:
        if server and kind == "Z":
            self.counts.round_trips += 1
            self.counts.trips_by[self._trip.pop(conn, "(other)")] += 1
        elif not server and kind in "PBQ":
            self._statement(kind, body, conn)
        elif server and kind == "C":
            tag = body.rstrip(b"\0").decode(errors="replace").split(" ")[0]
            self.counts.statements[tag] += 1
            if tag == "COMMIT":
                self.counts.commits += 1
        if not server and kind == "P":
            self.counts.parses += 1

    def _statement(self, kind: str, body: bytes, conn: int) -> None:
        """Which statement a Parse, Bind or simple Query names: its text's first words."""
        if kind == "Q":
            sql = _start(body.rstrip(b"\0").decode(errors="replace"))
        else:
            first, _, rest = body.partition(b"\0")
            if kind == "P":
                sql = _start(rest.partition(b"\0")[0].decode(errors="replace"))
                self._names[(conn, first.decode())] = sql
                self._trip.setdefault(conn, sql)
                return
            name = rest.partition(b"\0")[0].decode()
            sql = self._names.get((conn, name), "(unknown)")
        self.counts.executed[sql] += 1
        self._trip.setdefault(conn, sql)


def _start(sql: str) -> str:
    return " ".join(sql.split())[:90]
