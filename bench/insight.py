"""Customer health benchmark: score 1,000,000 customers with 10,000,000 interactions. Run by hand:

    .venv/bin/python bench/insight.py [--customers 1000000] [--per-customer 10] [--db PATH] [--messages 2000]

The history is built with bulk SQL (INSERT ... SELECT over a recursive counter) into a SQLite file
that later runs reuse (--db; delete it to rebuild). Then, each in a fresh process so that peak RSS
is the phase's own:
- full recompute from the log: every customer rescored (handlers/churn.py Churn.recompute with
  from_log, what a first run or `kefu customers rescore --from-log` does), against a baseline of a
  bare aggregate over the same interactions (one GROUP BY customer_id);
- periodic recompute: the same with contact times and rates from the stored rows (the hourly job);
- incremental update: messages from existing customers through the real pipeline with and without
  the churn observer (same run, alternating blocks), and the observer's own time per message.
Targets: full recompute <= 60 s, <= 1 ms added to ingest per message, <= 500 MB peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
from bot.messages import Inbound
from bot.pipeline import Logged, Pipeline
from handlers.churn import Churn
from handlers.routing import Router
from storage.db import Database

NOW = datetime(2027, 6, 1, 12, 0, tzinfo=UTC)
DAYS = 120  # the history spans this many days before NOW
CONFIG = parse_config({})


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


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
    t = time.perf_counter()
    async with db.sessions() as session:
        result = await session.stream(
            select(
                Interaction.customer_id, func.max(Interaction.created_at), func.count()
            ).group_by(Interaction.customer_id)
        )
        n = 0
        async for _ in result:
            n += 1
    seconds = time.perf_counter() - t
    await db.dispose()
    return {"seconds": seconds, "customers": n, "rss_mb": rss_mb()}


async def phase_recompute(path: Path, from_log: bool) -> dict[str, float]:
    db = Database(url(path))
    churn = Churn(CONFIG, Router(CONFIG))
    t = time.perf_counter()
    outcome = await churn.recompute(db, NOW, from_log=from_log)
    seconds = time.perf_counter() - t
    await db.dispose()
    return {
        "seconds": seconds,
        "scored": outcome.scored,
        "at_risk": outcome.at_risk,
        "changed": outcome.changed,
        "warned": outcome.warned,
        "rss_mb": rss_mb(),
    }


async def phase_incremental(path: Path, messages: int, customers: int) -> dict[str, float]:
    """Blocks of messages alternate between a pipeline with the churn observer and one without;
    each message is received on its own (a quiet ingest: no group commit to hide the cost)."""
    db = Database(url(path))
    router = Router(CONFIG)
    churn = Churn(CONFIG, router)
    spent: list[float] = []

    async def timed(session: object, note: Logged) -> None:
        t = time.perf_counter()
        await churn(session, note)  # type: ignore[arg-type]
        spent.append(time.perf_counter() - t)

    with_observer = Pipeline(db, route=router, observers=[timed])
    without = Pipeline(db, route=router, observers=[])
    rng = random.Random(14)
    run = f"{time.time_ns():x}"  # a rerun on the same database logs new messages, not duplicates
    totals = {"with": 0.0, "without": 0.0}
    block = 100
    at = NOW
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
            t = time.perf_counter()
            for inbound in inbounds:
                await pipeline.receive_many([inbound])
            totals[name] += time.perf_counter() - t
    await db.dispose()
    n = messages
    return {
        "messages": n,
        "with_ms": totals["with"] / n * 1000,
        "without_ms": totals["without"] / n * 1000,
        "added_ms": (totals["with"] - totals["without"]) / n * 1000,
        "observer_mean_ms": statistics.fmean(spent) * 1000,
        "observer_p99_ms": sorted(spent)[int(len(spent) * 0.99) - 1] * 1000,
        "rss_mb": rss_mb(),
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--per-customer", type=int, default=10)
    parser.add_argument("--db", type=Path, default=Path("/tmp/kefu-bench-insight.db"))
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--phase", choices=("baseline", "recompute", "periodic", "incremental"))
    args = parser.parse_args()
    if args.phase == "baseline":
        print(json.dumps(asyncio.run(phase_baseline(args.db))))
        return
    if args.phase in ("recompute", "periodic"):
        print(json.dumps(asyncio.run(phase_recompute(args.db, from_log=args.phase == "recompute"))))
        return
    if args.phase == "incremental":
        print(json.dumps(asyncio.run(phase_incremental(args.db, args.messages, args.customers))))
        return
    if not args.db.exists():
        build(args.db, args.customers, args.per_customer)
    base = child("baseline", args)
    print(
        f"baseline: one GROUP BY customer_id over the log: {base['seconds']:.1f} s "
        f"({base['customers']:,} customers), {base['rss_mb']:.0f} MB peak RSS"
    )
    full = child("recompute", args)
    print(
        f"full recompute: {full['scored']:,} customers in {full['seconds']:.1f} s "
        f"({full['seconds'] / base['seconds']:.1f}x the baseline; target <= 60 s), "
        f"{full['at_risk']:,} at risk, {full['rss_mb']:.0f} MB peak RSS (target <= 500 MB)"
    )
    inc = child("incremental", args)
    print(
        f"incremental: {inc['messages']:,} messages each way; ingest {inc['without_ms']:.2f} ms/message "
        f"without the observer, {inc['with_ms']:.2f} with: +{inc['added_ms']:.2f} ms "
        f"(target <= 1 ms); the observer itself {inc['observer_mean_ms']:.2f} ms mean, "
        f"{inc['observer_p99_ms']:.2f} ms p99; {inc['rss_mb']:.0f} MB peak RSS"
    )


if __name__ == "__main__":
    main()
