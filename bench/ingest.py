"""Ingest benchmark: signed webhook messages through the whole pipeline into SQLite.

Run by hand:  .venv/bin/python bench/ingest.py [--messages 20000] [--concurrency 32]

Starts two servers in turn, each in its own process, and drives them with the same client:
  floor — a bare Starlette handler on uvicorn doing one SQLite insert per request (same engine
          settings as kefu: aiosqlite, WAL, synchronous=NORMAL);
  kefu  — `kefu run` with a webhook source: signature check, JSON validation, dedupe, identify,
          thread, log, route, commit, 202.
Prints messages/s and p50/p99 latency for each, and kefu as a share of the floor.

Before and after in one run:  .venv/bin/python bench/ingest.py --baseline REF [--rounds 3]
exports the git commit REF (e.g. the commit before a change) to a temporary directory and runs its
`kefu run` alternately with this tree's, round after round, so both see the same machine load
(wall clock here varies by +-30% between runs); prints each round and the medians, and this
tree's rate as a share of the baseline's.

  .venv/bin/python bench/ingest.py --postgres --processes 1,2 [--messages 20000] [--rounds 3]
      [--trips]
runs the PostgreSQL scale-out bench instead (bench/ingest_scale.py): N `kefu run` processes on one
throwaway PostgreSQL against one on SQLite, with CPU seconds per message of kefu and of PostgreSQL;
with --rounds, SQLite and each N alternate round after round and the medians are printed; with
--baseline REF, each N also runs the kefu of commit REF (on its own fresh database); with --trips, one extra run first goes through a proxy that counts round trips per transaction
(bench/pg_trips.py).

With --prefill N (issue 12: big tables): kefu alone, on an empty database and on one already
holding N customers, conversations, interactions, sent outbox rows and acknowledgements (built
with bulk SQL), inside business hours (one team around the clock) and outside them (every message
gets the outside-hours check, and the first of each conversation an acknowledgement). Prints
each figure and prefilled / empty for each (target >= 0.80), both by rate and by the kefu
process's CPU seconds per message (empty / prefilled: what the bigger tables cost per message,
which a loaded machine's wall clock hides).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from webhook_load import drive  # noqa: E402

from channels.webhook import sign  # noqa: E402
from tests.servers.ports import free_port  # noqa: E402

SECRET = "bench-secret"
# Everyday questions (not complaints): the ingest path itself, without acknowledgements to send.
TEXTS = (
    "请问订单 {} 什么时候发货？",
    "Hi, can I change the delivery address for order {}?",
    "你好，订单 {} 可以开发票吗",
    "Do you have the blue one in size M? (order {})",
)


def floor_app(db_path: str):
    from sqlalchemy import text
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from storage.db import Database

    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body TEXT)")
    db = Database(f"sqlite+aiosqlite:///{db_path}")

    async def handle(request: Request) -> JSONResponse:
        body = await request.body()
        async with db.engine.begin() as conn:
            result = await conn.execute(text("INSERT INTO t (body) VALUES (:b)"), {"b": body.decode()})
        return JSONResponse({"id": result.lastrowid}, 202)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/webhooks/{source}", handle, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def serve_floor(port: int, db_path: str) -> None:
    import uvicorn

    uvicorn.run(floor_app(db_path), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def start_kefu(
    port: int, workdir: Path, code: Path = ROOT, extra_config: str = ""
) -> subprocess.Popen[bytes]:
    (workdir / "config.toml").write_text(
        f'[storage]\nurl = "sqlite+aiosqlite:///{workdir}/kefu.db"\n[http]\nport = {port}\n'
        '[logging]\nlevel = "WARNING"\n[webhook.sources.shop]\nsecret_env = "SHOP_SECRET"\n'
        + extra_config
    )
    return subprocess.Popen(
        [sys.executable, "-m", "bot", "run", "--config", str(workdir / "config.toml")],
        cwd=code,  # `-m bot` imports the tree it runs in, ahead of the installed one
        env={**os.environ, "SHOP_SECRET": SECRET},
        stderr=(workdir / "kefu.log").open("wb"),
    )


def start_floor(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, __file__, "--serve-floor", str(port), str(workdir / "floor.db")], cwd=ROOT
    )


def requests(n: int) -> list[tuple[bytes, dict[str, str]]]:
    now = str(int(time.time()) + 60)  # signed ahead of time: the client's HMAC is not the server's cost
    out = []
    for i in range(n):
        body = json.dumps(
            {"id": f"m{i}", "user": {"id": f"u{i % 5000}", "name": "客户"}, "text": TEXTS[i % len(TEXTS)].format(i)},
            ensure_ascii=False,
        ).encode()
        out.append((body, {"Content-Type": "application/json", "X-Kefu-Timestamp": now, "X-Kefu-Signature": sign(SECRET, now, body)}))
    return out


@dataclass(frozen=True)
class Measured:
    rate: float  # messages per second
    cpu: float  # CPU seconds (user + system, all threads) of the server process per message


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def run_measured(name: str, start, n: int, concurrency: int) -> Measured:
    """The server's rate and CPU per message: CPU is what a loaded machine changes least (wall
    clock here varies by +-30% with what others run)."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = start(port, Path(tmp))
        try:
            warmup, measured = requests(n + 200)[:200], requests(n + 200)[200:]
            asyncio.run(drive([port], warmup, concurrency))
            cpu0 = cpu_seconds(proc.pid)
            elapsed, lat = asyncio.run(drive([port], measured, concurrency))
            cpu = (cpu_seconds(proc.pid) - cpu0) / len(lat)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    lat.sort()
    rate = len(lat) / elapsed
    print(
        f"{name:5}  {rate:8.0f} msg/s   p50 {statistics.median(lat) * 1000:6.1f} ms   "
        f"p99 {lat[int(len(lat) * 0.99)] * 1000:6.1f} ms   CPU {cpu * 1e6:5.0f} µs/msg   "
        f"({len(lat)} messages, concurrency {concurrency})",
        flush=True,
    )
    return Measured(rate, cpu)


def run(name: str, start, n: int, concurrency: int) -> float:
    return run_measured(name, start, n, concurrency).rate


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def export(ref: str, dest: Path) -> str:
    """The tree of commit `ref`, written to dest; returns its short id."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", ref], check=True, capture_output=True, text=True
    ).stdout.strip()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return commit


def compare(ref: str, rounds: int, n: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        commit = export(ref, Path(tmp))
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        floors, befores, afters = [], [], []
        for r in range(1, rounds + 1):
            print(f"-- round {r}")
            floors.append(run("floor", start_floor, n, concurrency))
            befores.append(run("base", lambda port, work: start_kefu(port, work, Path(tmp)), n, concurrency))
            afters.append(run("kefu", start_kefu, n, concurrency))
    before, after, floor = (statistics.median(x) for x in (befores, afters, floors))
    print(
        f"median of {rounds} rounds: floor {floor:.0f}, baseline {commit} {before:.0f}, "
        f"this tree ({head}, with uncommitted changes if any) {after:.0f} msg/s"
    )
    print(f"kefu / baseline = {after / before:.2f}   (per round: "
          + ", ".join(f"{a / b:.2f}" for a, b in zip(afters, befores, strict=True)) + ")")
    print(f"kefu / floor = {after / floor:.2f}, baseline / floor = {before / floor:.2f}")


def prefill(path: Path, n: int) -> None:
    """A migrated kefu database holding n customers (each with an identity, a closed conversation,
    a logged message, a sent outbox row and an acknowledgement), written with set-based SQL."""
    from storage.db import Database

    async def migrate() -> None:
        db = Database(f"sqlite+aiosqlite:///{path}")
        await db.upgrade()
        await db.dispose()

    asyncio.run(migrate())
    old = "2026-01-05 08:00:00.000000"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA secure_delete=OFF")
    conn.execute("BEGIN")
    numbers = f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n})"
    statements = (
        "INSERT INTO customers (id, display_name, language, tags, vip, marketing_consent, created_at) "
        "SELECT i, 'customer ' || i, 'zh', '[]', 0, 0, :old FROM n",
        "INSERT INTO identities (id, customer_id, channel, address, reachable, created_at) "
        "SELECT i, i, 'webhook', 'shop:p' || i, 1, :old FROM n",
        "INSERT INTO conversations (id, customer_id, status, priority, is_complaint, reply_channel, "
        "reply_address, created_at, updated_at, resolutions, closed_at) "
        "SELECT i, i, 'closed', 'normal', 0, 'webhook', 'shop:p' || i, :old, :old, 1, :old FROM n",
        "INSERT INTO interactions (id, conversation_id, customer_id, channel, direction, author_kind, "
        "author_id, text, attachments, external_id, meta, created_at) "
        "SELECT i, i, i, 'webhook', 'in', 'customer', 'shop:p' || i, '请问订单 ' || i || ' 什么时候发货？', "
        "'[]', 'shop:old' || i, '{}', :old FROM n",
        "INSERT INTO outbox (id, channel, address, payload, dedupe_key, status, attempts, "
        "next_attempt_at, interaction_id, conversation_id, created_at, sent_at) "
        "SELECT i, 'webhook', 'shop:p' || i, '{\"text\": \"您好，已为您查询\"}', 'reply-old-' || i, 'sent', 1, "
        ":old, i, i, :old, :old FROM n",
        "INSERT INTO acknowledgements (id, conversation_id, channel, address, at) "
        "SELECT i, i, 'webhook', 'shop:p' || i, :old FROM n",
    )
    for statement in statements:
        started = time.perf_counter()
        conn.execute(f"{numbers} {statement}", {"old": old})
        print(f"  prefill: {statement.split('(')[0].strip():30} {n} rows in {time.perf_counter() - started:5.1f} s")
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def outside_hours_config() -> str:
    """A team open 09:00-18:00 UTC every day but today: every message of the run is outside."""
    from datetime import UTC, datetime

    days = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    today = days[datetime.now(UTC).weekday()]
    hours = ", ".join(f'{d} = "09:00-18:00"' for d in days if d != today)
    return f'[[routing.teams]]\nname = "night"\ntimezone = "UTC"\nhours = {{ {hours} }}\n'


def prefill_mode(n_customers: int, messages: int, concurrency: int, extra_config: str = "") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        filled = Path(tmp) / "filled.db"
        started = time.perf_counter()
        prefill(filled, n_customers)
        print(f"prefilled {n_customers} customers in {time.perf_counter() - started:.0f} s "
              f"({filled.stat().st_size / 1e6:.0f} MB)")

        def starter(source: Path | None, extra: str):
            def start(port: int, workdir: Path) -> subprocess.Popen[bytes]:
                if source is not None:
                    shutil.copy(source, workdir / "kefu.db")
                return start_kefu(port, workdir, extra_config=extra)

            return start

        # A loaded machine can take minutes per run: requests are signed before it starts.
        skew = "[webhook]\nmax_skew_seconds = 7200\n" + extra_config.replace("\\n", "\n") + "\n"
        figures: dict[tuple[str, str], Measured] = {}
        for hours, extra in (("inside", skew), ("outside", skew + outside_hours_config())):
            for label, source in (("empty", None), ("prefilled", filled)):
                figures[(hours, label)] = run_measured(
                    f"{label[:5]}", starter(source, extra), messages, concurrency
                )
            empty, full = figures[(hours, "empty")], figures[(hours, "prefilled")]
            print(
                f"{hours} business hours: prefilled / empty = {full.rate / empty.rate:.2f} by rate, "
                f"{empty.cpu / full.cpu:.2f} by CPU per message (empty {empty.cpu * 1e6:.0f}, "
                f"prefilled {full.cpu * 1e6:.0f} µs/msg)  (target >= 0.80)  [{load()}]",
                flush=True,
            )


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-floor":
        serve_floor(int(sys.argv[2]), sys.argv[3])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--baseline", metavar="REF", help="git commit to compare against, alternately")
    parser.add_argument("--rounds", type=int, default=None,
                        help="with --baseline (default 3) or --postgres (default 1): rounds of each")
    parser.add_argument("--postgres", action="store_true", help="the scale-out bench (see above)")
    parser.add_argument("--processes", default="1,2", help="with --postgres: e.g. 1,2,3")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="with --postgres: a kefu setting, e.g. insight.enabled=false")
    parser.add_argument("--trips", action="store_true",
                        help="with --postgres: first count round trips per batch through a proxy")
    parser.add_argument("--prefill", type=int, default=0,
                        help="compare an empty database with one holding this many customers")
    parser.add_argument("--extra-config", default="",
                        help='TOML appended to kefu\'s config in --prefill runs, e.g. "[insight]\\nenabled = false"')
    args = parser.parse_args()
    if args.postgres:
        import ingest_scale

        counts = [int(n) for n in args.processes.split(",") if n.strip()]
        with tempfile.TemporaryDirectory() as tmp:
            label = export(args.baseline, Path(tmp)) if args.baseline else ""
            ingest_scale.main(
                counts, args.messages, args.concurrency, requests, SECRET, args.set, args.trips,
                args.rounds or 1, Path(tmp) if args.baseline else None, label,
            )
        return
    print(f"cpus: {os.cpu_count()}  python {sys.version.split()[0]}  [{load()}]")
    if args.baseline:
        compare(args.baseline, args.rounds or 3, args.messages, args.concurrency)
        return
    if args.prefill:
        prefill_mode(args.prefill, args.messages, args.concurrency, args.extra_config)
        return
    floor = run("floor", start_floor, args.messages, args.concurrency)
    kefu = run("kefu", start_kefu, args.messages, args.concurrency)
    print(f"kefu / floor = {kefu / floor:.2f}  (target >= 0.50, and >= 2000 msg/s)")


if __name__ == "__main__":
    main()
