"""Campaign benchmark: plan one day's birthday greetings among 1,000,000 customers, and import
100,000 spreadsheet rows. Run by hand:

    .venv/bin/python bench/campaigns.py [--customers 1000000] [--rows 100000] [--url URL]

Figures are printed with a baseline measured in the same run on the same database (a bare
indexed SELECT of the day's birthday customers; a bare executemany INSERT of the same rows), so
they compare across machines as ratios. Targets: plan <= 5 s and <= 400 MB peak RSS; import of
100k rows < 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import random
import resource
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

from sqlalchemy import func, insert, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.cli_campaigns import import_customers
from bot.config import parse_config
from handlers.customer_import import COLUMNS, Settings
from handlers.greetings import Planner, Reach
from handlers.templating import Templates
from storage.db import Database
from storage.models import Customer, Identity

DAY = date(2099, 3, 14)  # a day to come: every birthday customer is due, whenever this runs
ZONES = ["Asia/Shanghai", "Pacific/Auckland", "America/Los_Angeles", "Europe/Berlin", None]
NOW = datetime.now(UTC)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


async def fill(db: Database, n: int) -> None:
    rng = random.Random(6)
    batch = 20_000
    for start in range(1, n + 1, batch):
        customers, identities = [], []
        for i in range(start, min(start + batch, n + 1)):
            born = date(1950 + rng.randrange(55), rng.randrange(1, 13), rng.randrange(1, 29))
            customers.append(
                {
                    "id": i,
                    "display_name": f"客户{i}",
                    "birthday": born,
                    "birthday_md": born.strftime("%m-%d"),
                    "timezone": ZONES[i % len(ZONES)],
                    "language": "zh" if i % 3 else "en",
                    "tags": [],
                    "vip": i % 50 == 0,
                    "marketing_consent": i % 10 != 0,
                    "created_at": NOW,
                }
            )
            identities.append(
                {
                    "customer_id": i,
                    "channel": "webhook",
                    "address": f"shop:u{i}",
                    "reachable": True,
                    "created_at": NOW,
                }
            )
        async with db.transaction() as session:
            await session.execute(insert(Customer.__table__), customers)
            await session.execute(insert(Identity.__table__), identities)


async def bench_plan(url: str, n: int) -> None:
    db = Database(url)
    await db.upgrade()
    async with db.sessions() as session:
        have = await session.scalar(select(func.count()).select_from(Customer)) or 0
    if have < n:
        t = time.perf_counter()
        await fill(db, n)
        print(f"filled {n:,} customers in {time.perf_counter() - t:.1f} s")
    md = DAY.strftime("%m-%d")
    t = time.perf_counter()
    async with db.sessions() as session:
        baseline_rows = len(
            (
                await session.execute(
                    select(Customer.id, Customer.timezone).where(Customer.birthday_md == md)
                )
            ).all()
        )
    baseline = time.perf_counter() - t
    cfg = parse_config(
        {
            "storage": {"url": url},
            "webhook": {"sources": {"shop": {"secret_env": "S", "callback_url": "http://127.0.0.1:9/cb"}}},
            "campaigns": {"birthday": {"enabled": True}},
        }
    )
    planner = Planner(cfg, Templates(), Reach.of(cfg))
    rss_before = rss_mb()
    t = time.perf_counter()
    outcome = await planner.plan(db, "birthday", DAY, NOW, lead=None)
    plan = time.perf_counter() - t
    t = time.perf_counter()
    again = await planner.plan(db, "birthday", DAY, NOW, lead=None)
    replan = time.perf_counter() - t
    await db.dispose()
    print(f"customers: {n:,}; birthdays on {md}: {baseline_rows:,}; planned {outcome.planned:,}, "
          f"skipped {outcome.skipped:,}")
    print(f"baseline indexed SELECT of the day's customers: {baseline * 1000:.0f} ms")
    print(
        f"plan (claim + log + outbox for each): {plan:.2f} s = {plan / baseline:.0f}x baseline  "
        "(target <= 5 s)"
    )
    print(
        f"second plan of the same day (nothing to do, {again.planned} planned): "
        f"{replan * 1000:.0f} ms "
        f"= {replan / baseline:.1f}x baseline"
    )
    print(f"peak RSS: {rss_mb():.0f} MB (before planning {rss_before:.0f} MB)  (target <= 400 MB)")


async def bench_import(rows: int, tmp: Path) -> None:
    path = tmp / "customers.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for i in range(rows):
            w.writerow(
                [
                    f"客户{i}",
                    f"c{i}@example.com",
                    f"+86138{i:08d}",
                    "",
                    f"19{i % 90 + 10:02d}-{i % 12 + 1:02d}-{i % 28 + 1:02d}",
                    "Asia/Shanghai",
                    "zh",
                    "retail",
                    "yes",
                    "",
                ]
            )
    base_db = Database(f"sqlite+aiosqlite:///{tmp}/baseline.db")
    await base_db.upgrade()
    t = time.perf_counter()
    async with base_db.transaction() as session:
        for start in range(0, rows, 1000):
            await session.execute(
                insert(Customer.__table__),
                [
                    {
                        "id": i + 1,
                        "display_name": f"客户{i}",
                        "tags": [],
                        "vip": False,
                        "marketing_consent": True,
                        "created_at": NOW,
                    }
                    for i in range(start, min(start + 1000, rows))
                ],
            )
    baseline = time.perf_counter() - t
    await base_db.dispose()
    db = Database(f"sqlite+aiosqlite:///{tmp}/import.db")
    await db.upgrade()
    t = time.perf_counter()
    report = await import_customers(db, path, Settings())
    first = time.perf_counter() - t
    t = time.perf_counter()
    again = await import_customers(db, path, Settings())
    second = time.perf_counter() - t
    await db.dispose()
    print(
        f"import {rows:,} rows (SQLite): {first:.1f} s = {first / baseline:.0f}x a bare INSERT of "
        "the "
        f"customers ({baseline:.2f} s)  (target < 60 s); created {report.created:,}"
    )
    print(f"re-import of the same file: {second:.1f} s; unchanged {again.unchanged:,}, "
          f"created {again.created}, updated {again.updated}")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument(
        "--url", help="database for the planning bench (default: a temporary SQLite file)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite+aiosqlite:///{tmp}/bench.db"
        await bench_plan(url, args.customers)
        if args.rows:
            await bench_import(args.rows, Path(tmp))


if __name__ == "__main__":
    asyncio.run(main())
