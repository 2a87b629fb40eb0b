"""`bench/ingest.py --postgres --processes 1,2`: webhook ingest into PostgreSQL with N `kefu run`
processes behind one client, against one `kefu run` on SQLite in the same run.

For each N a fresh database on a throwaway PostgreSQL 15 (configured as a user runs it: fsync,
synchronous_commit and full_page_writes at their defaults; only the port, socket folder and
max_connections are set), N kefu processes on their own ports, and the client's lanes spread over
them round-robin (what a load balancer in front of them does). Prints msg/s, p50/p99, the ratio to
SQLite, and CPU seconds per message of kefu (all its processes) and of PostgreSQL (the postmaster
and every backend), read from /proc before and after the measured part: enough to size a
deployment (messages/s x CPU s/message = cores).
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pg_trips import Counts, TripCounter  # noqa: E402
from webhook_load import drive  # noqa: E402

from tests.servers.ports import free_port  # noqa: E402
from tests.servers.postgres import PostgresServer  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
# As a user would run it; only what a throwaway server on a free port needs.
USER_LIKE = "-c max_connections=200"


@dataclass
class Result:
    name: str
    processes: int
    rate: float
    p50: float
    p99: float
    kefu_cpu: float  # seconds per message
    pg_cpu: float | None


def cpu_seconds(pids: set[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (all threads)
    return total / TICKS


def tree(root: int) -> set[int]:
    """root and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            parents[int(entry.name)] = int(stat[1])
    found = {root}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return found


def postmaster_pid(server: PostgresServer) -> int:
    return int((server.data / "postmaster.pid").read_text().split()[0])


EXTRA: list[str] = []  # --set SECTION.KEY=VALUE, as TOML lines per section


def start_kefu(
    url: str, port: int, workdir: Path, secret: str, code: Path = ROOT
) -> subprocess.Popen[bytes]:
    config = workdir / f"kefu-{port}.toml"
    config.write_text(
        f'[storage]\nurl = "{url}"\n[http]\nport = {port}\n'
        '[logging]\nlevel = "WARNING"\n[webhook.sources.shop]\nsecret_env = "SHOP_SECRET"\n'
        + "".join(EXTRA)
    )
    return subprocess.Popen(
        [sys.executable, "-m", "bot", "run", "--config", str(config)],
        cwd=code,  # `-m bot` imports the tree it runs in, ahead of the installed one
        env={**os.environ, "SHOP_SECRET": secret},
        stderr=(workdir / f"kefu-{port}.log").open("wb"),
    )


async def analyze(url: str) -> None:
    """What autovacuum does within its first minute on a live database. Without it a 20-second
    bench measures plans PostgreSQL cached on kefu's connections for the warm-up's near-empty
    tables (sequential scans where the unique indexes belong: 2x the server's CPU per message)."""
    import asyncpg
    from sqlalchemy.engine import make_url

    conn = await asyncpg.connect(
        make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def measure(
    name: str,
    urls: list[str],
    make_requests: object,
    n: int,
    concurrency: int,
    secret: str,
    postmaster: int | None,
    counter: TripCounter | None = None,
    code: Path = ROOT,
) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        ports = [free_port() for _ in urls]
        procs = [
            start_kefu(u, p, Path(tmp), secret, code) for u, p in zip(urls, ports, strict=True)
        ]
        try:
            reqs = make_requests(n + 500)  # type: ignore[operator]
            asyncio.run(drive(ports, reqs[:500], concurrency))  # warm-up: imports, caches, pools
            if postmaster:
                asyncio.run(analyze(urls[0]))
            kefu_pids = {p.pid for p in procs}
            pg_pids = tree(postmaster) if postmaster else set()
            kefu0, pg0 = cpu_seconds(kefu_pids), cpu_seconds(pg_pids)
            trips0 = counter.snapshot() if counter else None
            elapsed, lat = asyncio.run(drive(ports, reqs[500:], concurrency))
            kefu1 = cpu_seconds(kefu_pids)
            pg1 = cpu_seconds(tree(postmaster)) if postmaster else 0.0
            if counter and trips0:
                print_trips(counter.snapshot().minus(trips0), len(reqs) - 500)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(timeout=60)
    lat.sort()
    return Result(
        name, len(urls), len(lat) / elapsed, statistics.median(lat) * 1000,
        lat[int(len(lat) * 0.99)] * 1000, (kefu1 - kefu0) / len(lat),
        (pg1 - pg0) / len(lat) if postmaster else None,
    )


def print_trips(c: Counts, messages: int) -> None:
    per = max(c.commits, 1)
    print(
        f"round trips: {c.round_trips / per:.1f} per transaction ({c.commits} transactions, "
        f"{messages / per:.1f} messages each), {c.round_trips / messages:.2f} per message; "
        f"statements prepared: {c.parses / per:.1f} per transaction"
    )
    print("  per transaction: " + ", ".join(
        f"{tag} {n / per:.1f}" for tag, n in c.statements.most_common()
    ))
    print("  round trips per transaction, by the first statement each sent:")
    for sql, n in c.trips_by.most_common(12):
        print(f"    {n / per:5.2f}  (run {c.executed[sql] / per:5.2f})  {sql}")


def report(r: Result, baseline: float) -> None:
    pg = f"{r.pg_cpu * 1e6:6.0f}" if r.pg_cpu is not None else "     -"
    print(
        f"{r.name:10} {r.processes:3d}  {r.rate:8.0f} msg/s  {r.rate / baseline:5.2f}x  "
        f"p50 {r.p50:6.1f} ms  p99 {r.p99:6.1f} ms  kefu {r.kefu_cpu * 1e6:5.0f} µs/msg  "
        f"postgres {pg} µs/msg",
        flush=True,
    )


def main(processes: list[int], messages: int, concurrency: int, make_requests: object,
         secret: str, settings: list[str] = [], trips: bool = False,  # noqa: B006 - read only
         rounds: int = 1, baseline: Path | None = None, label: str = "") -> None:
    for setting in settings:  # "insight.enabled=false" -> [insight]\nenabled = false
        key, _, value = setting.partition("=")
        section, _, name = key.rpartition(".")
        EXTRA.append(f"[{section}]\n{name} = {value}\n")
    if settings:
        print("kefu settings: " + ", ".join(settings))
    print(f"cpus: {os.cpu_count()}  python {sys.version.split()[0]}  messages {messages}  "
          f"concurrency {concurrency}  rounds {rounds}")
    print("PostgreSQL: throwaway server with the defaults a user runs (fsync, synchronous_commit,"
          " full_page_writes on)")
    print(f"{'database':10} {'N':>3}  {'rate':>14}  {'vs SQLite':>6}")
    server = PostgresServer(options=USER_LIKE)
    server.start()
    # Each round measures SQLite and then each N in turn, so all see the same machine load
    # (wall clock here varies by +-30%); the ratio is taken within each round.
    results: dict[int, list[Result]] = {0: []}
    ratios: dict[int, list[float]] = {}
    try:
        postmaster = postmaster_pid(server)
        if trips:
            # One process through a counting proxy (its thread costs the client CPU: a separate
            # run, not one of the measured ones).
            counter = TripCounter(server.port)
            proxy = counter.start()
            url = server.create_database().replace(f":{server.port}/", f":{proxy}/")
            measure("via proxy", [url], make_requests, messages, concurrency, secret, None, counter)
            counter.stop()
        for r in range(1, rounds + 1):
            if rounds > 1:
                print(f"-- round {r}", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                sqlite = measure(
                    "sqlite", [f"sqlite+aiosqlite:///{tmp}/kefu.db"], make_requests, messages,
                    concurrency, secret, None,
                )
            report(sqlite, sqlite.rate)
            results[0].append(sqlite)
            for n in processes:
                if baseline is not None:
                    # The same N with the baseline commit's kefu, on its own fresh database.
                    base = measure(
                        f"pg {label}"[:10], [server.create_database()] * n, make_requests,
                        messages, concurrency, secret, postmaster, code=baseline,
                    )
                    report(base, sqlite.rate)
                    results.setdefault(-n, []).append(base)
                    ratios.setdefault(-n, []).append(base.rate / sqlite.rate)
                url = server.create_database()
                result = measure(
                    "postgresql", [url] * n, make_requests, messages, concurrency, secret,
                    postmaster,
                )
                report(result, sqlite.rate)
                results.setdefault(n, []).append(result)
                ratios.setdefault(n, []).append(result.rate / sqlite.rate)
    finally:
        server.stop()
    if rounds > 1:
        print(f"-- median of {rounds} rounds (ratio: median of the per-round ratios)")
        lite = statistics.median(r.rate for r in results[0])
        print(f"{'sqlite':10} {1:3d}  {lite:8.0f} msg/s  {1:5.2f}x  kefu "
              f"{statistics.median(r.kefu_cpu for r in results[0]) * 1e6:5.0f} µs/msg")
        for n in [m for k in processes for m in ((-k, k) if baseline else (k,))]:
            rs = results[n]
            name = f"pg {label}"[:10] if n < 0 else "postgresql"
            print(
                f"{name:10} {abs(n):3d}  {statistics.median(r.rate for r in rs):8.0f} msg/s  "
                f"{statistics.median(ratios[n]):5.2f}x  kefu "
                f"{statistics.median(r.kefu_cpu for r in rs) * 1e6:5.0f} µs/msg  postgres "
                f"{statistics.median(r.pg_cpu or 0.0 for r in rs) * 1e6:5.0f} µs/msg  "
                "(per round: " + ", ".join(f"{x:.2f}" for x in ratios[n]) + ")"
            )
    print("sizing: cores needed = msg/s x (kefu + postgres µs/msg) / 1e6; the client and the "
          "server share these cores, so figures for N > cores are indicative")
