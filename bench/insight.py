"""Customer health benchmark: score 1,000,000 customers with 10,000,000 interactions. Run by hand:

    .venv/bin/python bench/insight.py [--customers 1000000] [--per-customer 10] [--db PATH]
                                      [--messages 2000]

The history is built with bulk SQL (INSERT ... SELECT over a recursive counter) into a SQLite file
that later runs reuse (--db; delete it to rebuild, or after a schema change). Then, each in a
fresh process so that peak RSS is the phase's own, with wall-clock and CPU seconds (user + system,
every thread; steadier than wall-clock on a shared machine) and the load average:
- baseline: a bare aggregate over the same interactions (one GROUP BY customer_id streamed), the
  floor any recompute that reads the log stands on;
- first scoring: customer_health emptied, then every customer scored from the log and every row
  written (what the first run of an install with history does);
- full recompute from the log (`kefu customers rescore --from-log`): rows present, every customer
  rescored from the log, changed rows written;
- periodic recompute (the hourly job): contact times and rates from the stored rows;
- incremental update: messages from existing customers through the real pipeline with and without
  the churn observer (same run, alternating blocks), each message received on its own (no group
  commit to hide the cost; the observer's own time per message too), then 20 per receive_many
  (a busy ingest's group commit, the observer scoring the batch at once).
Targets: full recompute <= 60 s, <= 1 ms added to ingest per message, <= 500 MB peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.config import parse_config
from bot.effects import Effects, Logged
from bot.messages import Inbound
from bot.plugins import pipeline as plugged_pipeline
from handlers.churn import Churn
from handlers.routing import Router
from storage.db import Database

NOW = datetime(2027, 6, 1, 12, 0, tzinfo=UTC)
DAYS = 120  # the history spans this many days before NOW
BATCH = 20  # messages per receive_many in the batched incremental phase (divides the block)
CONFIG = parse_config({})


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load() -> float:
    return os.getloadavg()[0]


def _ts(expr: str) -> str:
    """A SQL expression of seconds before NOW -> kefu's stored UTC text."""
    base = NOW.strftime("%Y-%m-%d %H:%M:%S")
    return (
        f"strftime('%Y-%m-%d %H:%M:%S', '{base}', '-' || max({expr}, 0) || ' seconds') || '.000000'"
    )


def build(path: Path, customers: int, per: int) -> None:
    asyncio.run(_migrate(path))
    t = time.perf_counter()
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-200000")
    counter = (
        f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {customers})"
    )
    spread = DAYS * 86400
    with con:
        con.execute(
            "INSERT INTO staff (id, name, role, active, on_duty, created_at) VALUES "
            "(1, 'amy', 'agent', 1, 1, '2027-01-01 00:00:00.000000')"
        )
        con.execute(
            f"{counter} INSERT INTO customers (id, display_name, language, tags, vip, marketing_consent, created_at)"
            f" SELECT i, 'c' || i, CASE WHEN i % 3 THEN 'zh' ELSE 'en' END, '[]', i % 50 = 0, i % 3 = 0,"
            f" {_ts(f'{spread} + i % 86400')} FROM n"
        )
        con.execute(
            "INSERT INTO identities (customer_id, channel, address, reachable, created_at)"
            " SELECT id, 'webhook', 'shop:u' || id, id % 97 != 0, created_at FROM customers"
        )
        # One conversation each; every 7th customer a second one. Every 5th a complaint, every
        # 40th severe; a third still open; the others resolved.
        con.execute(
            f"INSERT INTO conversations (id, customer_id, status, priority, is_complaint, severity, assignee,"
            f" created_at, updated_at, resolved_at, first_response_at, resolutions)"
            f" SELECT id, id, CASE WHEN id % 3 = 0 THEN 'open' ELSE 'resolved' END, 'normal', id % 5 = 0,"
            f" CASE WHEN id % 40 = 0 THEN 'high' WHEN id % 5 = 0 THEN 'normal' END, 1,"
            f" {_ts(f'(id * 7919) % {spread}')}, {_ts(f'(id * 7919) % {spread} - 600')},"
            f" CASE WHEN id % 3 THEN {_ts(f'(id * 7919) % {spread} - 7200')} END,"
            f" {_ts(f'(id * 7919) % {spread} - 300')}, CASE WHEN id % 3 THEN 1 ELSE 0 END FROM customers"
        )
        con.execute(
            f"INSERT INTO conversations (id, customer_id, status, priority, is_complaint, severity, created_at,"
            f" updated_at, resolutions)"
            f" SELECT {customers} + id, id, 'open', 'high', 1, 'normal', {_ts('(id * 104729) % 864000')},"
            f" {_ts('(id * 104729) % 864000')}, 0 FROM customers WHERE id % 7 = 0"
        )
        con.execute(
            "INSERT INTO complaint_reasons (conversation_id, reason, at) SELECT id, 'threat to escalate: 12315',"
            " created_at FROM conversations WHERE severity = 'high'"
        )
        con.execute(
            "INSERT INTO sla_breaches (conversation_id, target, cycle, priority, team, assignee, due_at, breached_at)"
            " SELECT id, 'first_response', 0, 'normal', 'support', 1, created_at, updated_at FROM conversations"
            " WHERE id % 11 = 0"
        )
        con.execute(
            "INSERT INTO surveys (conversation_id, customer_id, resolution, assignee, channel, asked_at,"
            " expires_at, answered_at, answer_channel, score)"
            " SELECT id, customer_id, 1, 1, 'webhook', resolved_at, resolved_at, resolved_at, 'webhook',"
            " 1 + id % 5 FROM conversations WHERE resolved_at IS NOT NULL AND id % 4 = 0"
        )
        # `per` log rows per customer, spread over the history: 60 % theirs, the rest answers.
        con.execute(
            f"INSERT INTO interactions (conversation_id, customer_id, channel, direction, author_kind,"
            f" author_id, text, attachments, external_id, meta, created_at)"
            f" SELECT c.id, c.id, 'webhook', CASE WHEN k.k % 5 < 3 THEN 'in' ELSE 'out' END,"
            f" CASE WHEN k.k % 5 < 3 THEN 'customer' ELSE 'agent' END, 'shop:u' || c.id,"
            f" 'message ' || k.k, '[]', 'b' || c.id || '-' || k.k, '{{}}',"
            f" {_ts(f'((c.id * 31 + k.k * 7177) * 2654435761) % {spread}')}"
            f" FROM customers c, (SELECT column1 AS k FROM (VALUES {', '.join(f'({k})' for k in range(per))})) k"
        )
    con.execute("ANALYZE")
    con.close()
    print(
        f"built {customers:,} customers, {customers * per:,} interactions in {time.perf_counter() - t:.0f} s "
        f"({path.stat().st_size / 2**30:.1f} GiB)"
    )


async def _migrate(path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{path}")
    await db.upgrade()
    await db.dispose()


def url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


# --- phases, each in its own process ----------------------------------------------------------


async def phase_baseline(path: Path) -> dict[str, float]:
    from sqlalchemy import func, select

    from storage.models import Interaction

    db = Database(url(path))
    t, c, before = time.perf_counter(), cpu_s(), load()
    async with db.sessions() as session:
        result = await session.stream(
            select(
                Interaction.customer_id, func.max(Interaction.created_at), func.count()
            ).group_by(Interaction.customer_id)
        )
        n = 0
        async for _ in result:
            n += 1
    seconds, cpu = time.perf_counter() - t, cpu_s() - c
    await db.dispose()
    return {"seconds": seconds, "cpu": cpu, "customers": n, "rss_mb": rss_mb(), "load": before}


async def phase_recompute(path: Path, from_log: bool, first: bool) -> dict[str, float]:
    db = Database(url(path))
    if first:
        con = sqlite3.connect(path)
        with con:
            con.execute("DELETE FROM customer_health")
        con.close()
    churn = Churn(CONFIG, Router(CONFIG))
    t, c, before = time.perf_counter(), cpu_s(), load()
    outcome = await churn.recompute(db, NOW, from_log=from_log)
    seconds, cpu = time.perf_counter() - t, cpu_s() - c
    await db.dispose()
    return {
        "seconds": seconds,
        "cpu": cpu,
        "scored": outcome.scored,
        "at_risk": outcome.at_risk,
        "changed": outcome.changed,
        "warned": outcome.warned,
        "rss_mb": rss_mb(),
        "load": before,
    }


async def phase_incremental(
    path: Path, messages: int, customers: int, batch: int = 1
) -> dict[str, float]:
    """Blocks of messages alternate between a pipeline with the churn observer and one without.
    batch 1: each message is received on its own (a quiet ingest: no group commit to hide the
    cost), the observer timed per message; batch N: N messages to one receive_many (a busy
    ingest's group commit), the observer scoring the batch at once (observe_batch)."""
    db = Database(url(path))
    router = Router(CONFIG)
    churn = Churn(CONFIG, router)
    spent: list[float] = []

    async def timed(session: object, note: Logged) -> Effects | None:
        t = time.perf_counter()
        effects = await churn(session, note)  # type: ignore[arg-type]
        spent.append(time.perf_counter() - t)
        return effects

    with_observer = plugged_pipeline(db, route=router, observers=[timed if batch == 1 else churn])
    without = plugged_pipeline(db, route=router, observers=[])
    rng = random.Random(14)
    run = f"{time.time_ns():x}"  # a rerun on the same database logs new messages, not duplicates
    totals = {"with": 0.0, "without": 0.0}
    cpu = {"with": 0.0, "without": 0.0}
    block = 100
    at = NOW
    before = load()
    for start in range(0, messages, block):
        for name, pipeline in (("with", with_observer), ("without", without)):
            inbounds = []
            for k in range(block):
                cid = rng.randrange(1, customers + 1)
                at += timedelta(seconds=1)
                inbounds.append(
                    Inbound(
                        channel="webhook",
                        external_id=f"bench-{run}-{name}-{start}-{k}",
                        address=f"shop:u{cid}",
                        text="我的快递怎么还没到？",
                        received_at=at,
                    )
                )
            t, c = time.perf_counter(), cpu_s()
            for first in range(0, block, batch):
                await pipeline.receive_many(inbounds[first : first + batch])
            totals[name] += time.perf_counter() - t
            cpu[name] += cpu_s() - c
    await db.dispose()
    n = messages
    return {
        "messages": n,
        "with_ms": totals["with"] / n * 1000,
        "without_ms": totals["without"] / n * 1000,
        "added_ms": (totals["with"] - totals["without"]) / n * 1000,
        "with_cpu_ms": cpu["with"] / n * 1000,
        "without_cpu_ms": cpu["without"] / n * 1000,
        "added_cpu_ms": (cpu["with"] - cpu["without"]) / n * 1000,
        "observer_mean_ms": statistics.fmean(spent) * 1000 if spent else 0.0,
        "observer_p99_ms": sorted(spent)[int(len(spent) * 0.99) - 1] * 1000 if spent else 0.0,
        "rss_mb": rss_mb(),
        "load": before,
    }


def child(phase: str, args: argparse.Namespace) -> dict[str, float]:
    cmd = [
        sys.executable,
        __file__,
        "--phase",
        phase,
        "--db",
        str(args.db),
        "--messages",
        str(args.messages),
        "--customers",
        str(args.customers),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def sizes(path: Path) -> str:
    """The database file and what the log's tables and indexes take in it (SQLite's dbstat)."""
    con = sqlite3.connect(path)
    rows: list[tuple[str, int]] = []
    try:
        for name in ("interactions", "ix_interactions_customer", "customer_health"):
            for (size,) in con.execute(
                "SELECT pgsize FROM dbstat WHERE name = ? AND aggregate = TRUE", (name,)
            ):
                rows.append((name, int(size or 0)))
    except sqlite3.OperationalError:  # built without SQLITE_ENABLE_DBSTAT_VTAB
        rows = []
    finally:
        con.close()
    parts = ", ".join(f"{name} {size / 2**20:,.0f} MiB" for name, size in sorted(rows))
    wal = path.with_name(path.name + "-wal")
    extra = f" + WAL {wal.stat().st_size / 2**20:,.0f} MiB" if wal.exists() else ""
    return f"{path.stat().st_size / 2**30:.2f} GiB{extra}" + (f" ({parts})" if parts else "")


def show(name: str, r: dict[str, float], base: dict[str, float], target: str) -> None:
    print(
        f"{name}: {r['scored']:,} customers in {r['seconds']:.1f} s wall, {r['cpu']:.1f} s CPU "
        f"({r['seconds'] / base['seconds']:.1f}x / {r['cpu'] / base['cpu']:.1f}x the baseline's "
        f"wall / CPU){target}; {r['at_risk']:,} at risk, {r['changed']:,} rows written; "
        f"{r['rss_mb']:.0f} MB peak RSS (target <= 500 MB); load {r['load']:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--per-customer", type=int, default=10)
    parser.add_argument("--db", type=Path, default=Path("/tmp/kefu-bench-insight.db"))
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument(
        "--phase",
        choices=("baseline", "first", "recompute", "periodic", "incremental", "batched"),
    )
    args = parser.parse_args()
    if args.phase == "baseline":
        print(json.dumps(asyncio.run(phase_baseline(args.db))))
        return
    if args.phase in ("first", "recompute", "periodic"):
        from_log = args.phase != "periodic"
        result = asyncio.run(phase_recompute(args.db, from_log, first=args.phase == "first"))
        print(json.dumps(result))
        return
    if args.phase in ("incremental", "batched"):
        batch = 1 if args.phase == "incremental" else BATCH
        result = asyncio.run(phase_incremental(args.db, args.messages, args.customers, batch))
        print(json.dumps(result))
        return
    if not args.db.exists():
        build(args.db, args.customers, args.per_customer)
    print(f"database: {sizes(args.db)}; {os.cpu_count()} CPUs, load {load():.1f}")
    base = child("baseline", args)
    print(
        f"baseline: one GROUP BY customer_id over the log: {base['seconds']:.1f} s wall, "
        f"{base['cpu']:.1f} s CPU ({base['customers']:,} customers), "
        f"{base['rss_mb']:.0f} MB peak RSS; load {base['load']:.1f}"
    )
    show("first scoring from the log (empty customer_health)", child("first", args), base,
         "; target <= 60 s")
    show("full recompute from the log (rescore --from-log)", child("recompute", args), base,
         "; target <= 60 s")
    show("periodic recompute (stored rates)", child("periodic", args), base, "")
    inc = child("incremental", args)
    print(
        f"incremental: {inc['messages']:,} messages each way, each received alone; ingest "
        f"{inc['without_ms']:.2f} ms/message without the observer, {inc['with_ms']:.2f} with: "
        f"+{inc['added_ms']:.2f} ms wall (target <= 1 ms); CPU {inc['without_cpu_ms']:.2f} -> "
        f"{inc['with_cpu_ms']:.2f} ms/message: +{inc['added_cpu_ms']:.2f} ms; the observer itself "
        f"{inc['observer_mean_ms']:.2f} ms mean, {inc['observer_p99_ms']:.2f} ms p99; "
        f"{inc['rss_mb']:.0f} MB peak RSS; load {inc['load']:.1f}"
    )
    inc = child("batched", args)
    print(
        f"incremental, {BATCH} messages per receive_many (group commit): ingest "
        f"{inc['without_ms']:.2f} ms/message without the observer, {inc['with_ms']:.2f} with: "
        f"+{inc['added_ms']:.2f} ms wall (target <= 1 ms); CPU {inc['without_cpu_ms']:.2f} -> "
        f"{inc['with_cpu_ms']:.2f} ms/message: +{inc['added_cpu_ms']:.2f} ms; "
        f"{inc['rss_mb']:.0f} MB peak RSS; load {inc['load']:.1f}"
    )
    print(f"database after: {sizes(args.db)}; load {load():.1f}")


if __name__ == "__main__":
    main()
