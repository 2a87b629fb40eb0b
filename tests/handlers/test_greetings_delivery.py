"""Greetings end to end: a real kefu (scheduler, outbox, channels) with an injected clock, the
webhook callback and Telegram Bot API stand-ins as receivers, real processes for crash and race."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from typer.testing import CliRunner

from bot.app import Kefu
from bot.cli import app as cli
from bot.config import parse_config
from handlers.greetings import Planner, Reach
from handlers.templating import Templates
from storage.db import Database
from storage.models import CampaignDelivery, Customer, Identity, Interaction, OutboxRow
from tests.servers.botapi import TOKEN, BotApiServer
from tests.servers.callback import CallbackServer
from tests.servers.kefu import base_config, post_signed, running_kefu, url
from tests.servers.postgres import PostgresServer

ROOT = Path(__file__).parent.parent.parent
SECRET = "shop-secret-0123"
ENV = {"SHOP_SECRET": SECRET, "KEFU_TELEGRAM_TOKEN": TOKEN}
SPRING = date(2027, 2, 6)
SHANGHAI_NINE = datetime(2027, 2, 6, 1, 0, tzinfo=UTC)  # 09:00 in Shanghai on 春节
SPRING_2099 = "2099-01-21"  # 春节 still to come whenever the test runs: every customer is due


def campaign_config(db_url: str, callback: str, **sections: Any) -> dict[str, Any]:
    return base_config(
        db_url,
        webhook={"sources": {"shop": {"secret_env": "SHOP_SECRET", "callback_url": callback}}},
        campaigns={"birthday": {"enabled": True}, "holidays": {"enabled": True}},
        **sections,
    )


@asynccontextmanager
async def kefu_at(
    config: dict[str, Any], clock: Callable[[], datetime], env: Mapping[str, str] = ENV
) -> AsyncIterator[Kefu]:
    async with running_kefu(config, env, clock=clock) as kefu:
        yield kefu


async def seed(db_url: str, people: list[dict[str, Any]]) -> list[int]:
    db = Database(db_url)
    await db.upgrade()
    ids = []
    try:
        async with db.transaction() as session:
            for p in people:
                identities = p.pop("identities")
                customer = Customer(marketing_consent=p.pop("consent", True), tags=[], **p)
                session.add(customer)
                await session.flush()
                ids.append(customer.id)
                for channel, address in identities:
                    session.add(Identity(customer_id=customer.id, channel=channel, address=address))
    finally:
        await db.dispose()
    return ids


async def scalar(db_url: str, query: Any) -> Any:
    db = Database(db_url)
    try:
        async with db.sessions() as session:
            return await session.scalar(query)
    finally:
        await db.dispose()


async def test_spring_festival_greetings_delivered_once_through_the_webhook(tmp_path: Path) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path}/kefu.db"
    await seed(
        db_url,
        [
            {
                "display_name": "王小明",
                "timezone": "Asia/Shanghai",
                "language": "zh",
                "identities": [("webhook", "shop:u1")],
            },
            {
                "display_name": "Alice",
                "timezone": "America/Los_Angeles",
                "language": "en",
                "identities": [("webhook", "shop:u2")],
            },
            {
                "display_name": "无同意",
                "timezone": "Asia/Shanghai",
                "language": "zh",
                "consent": False,
                "identities": [("webhook", "shop:u3")],
            },
        ],
    )
    now = [SHANGHAI_NINE]
    async with CallbackServer(SECRET) as receiver:
        config = campaign_config(db_url, receiver.url)
        async with kefu_at(config, lambda: now[0]) as kefu:
            [got] = await receiver.wait_for(1)
            assert got.json["type"] == "greeting" and got.json["user"] == {"id": "u1"}
            assert "新春快乐" in got.json["text"] and "王小明" in got.json["text"]
            assert got.row_key == "greeting:holiday:2027-02-06:1"
            # Los Angeles' 09:00 on the 6th is 17:00 UTC: the planner run shortly before it
            now[0] = datetime(2027, 2, 6, 16, 45, tzinfo=UTC)
            await kefu.scheduler.run_once()
            await kefu.worker.run_once()
            assert len(receiver.delivered()) == 1  # planned, held by the outbox until 17:00
            now[0] = datetime(2027, 2, 6, 17, 0, tzinfo=UTC)
            kefu.worker.wake()
            await receiver.wait_for(2)
            assert "Happy Chinese New Year, Alice" in receiver.delivered()[1].json["text"]
        # a restart later the same day plans and sends nothing again
        async with kefu_at(config, lambda: now[0]) as kefu:
            assert (await kefu.scheduler.run_once()).planned == 0
            assert await kefu.worker.run_once() == 0
        assert receiver.delivered_row_keys() == {
            "greeting:holiday:2027-02-06:1": 1,
            "greeting:holiday:2027-02-06:2": 1,
        }
    log = await scalar(db_url, select(func.count()).select_from(Interaction).where(
        Interaction.direction == "out", Interaction.author_kind == "bot"))
    assert log == 2


async def test_birthday_greeting_delivered_through_telegram(tmp_path: Path) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path}/kefu.db"
    await seed(
        db_url,
        [
            {
                "display_name": "张三",
                "birthday": date(1990, 3, 14),
                "birthday_md": "03-14",
                "timezone": "Asia/Shanghai",
                "language": "zh",
                "identities": [("telegram", "1001"), ("phone", "+8613800138000")],
            }
        ],
    )
    now = datetime(2027, 3, 14, 1, 0, tzinfo=UTC)
    async with BotApiServer() as botapi, CallbackServer(SECRET) as receiver:
        config = campaign_config(db_url, receiver.url, telegram={
            "enabled": True, "base_url": botapi.base_url, "poll_timeout_seconds": 1})
        async with kefu_at(config, lambda: now):
            await botapi.wait_for(lambda b: len(b.to(1001)) == 1, what="the birthday greeting")
    [sent] = botapi.to(1001)
    assert sent.text is not None and "张三，生日快乐" in sent.text and "37 岁" in sent.text


async def test_opt_out_in_chinese_and_english_withdraws_consent_and_confirms(
    tmp_path: Path,
) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path}/kefu.db"
    zh, en, chatty = await seed(
        db_url,
        [
            {
                "display_name": "李四",
                "timezone": "Asia/Shanghai",
                "identities": [("webhook", "shop:zh")],
            },
            {
                "display_name": "Bob",
                "timezone": "America/Los_Angeles",
                "language": "en",
                "identities": [("webhook", "shop:en")],
            },
            {
                "display_name": "Carol",
                "timezone": "America/Los_Angeles",
                "language": "en",
                "identities": [("webhook", "shop:chatty")],
            },
        ],
    )
    # 16:45 UTC on 春节: Los Angeles' greetings (17:00 UTC) are planned and waiting in the outbox
    now = datetime(2027, 2, 6, 16, 45, tzinfo=UTC)
    async with CallbackServer(SECRET) as receiver:
        config = campaign_config(db_url, receiver.url)
        async with kefu_at(config, lambda: now) as kefu:
            assert await scalar(db_url, select(func.count()).select_from(OutboxRow)) == 2
            import httpx

            async with httpx.AsyncClient() as client:
                endpoint = url(kefu, "/webhooks/shop")
                for user, text in (
                    ("zh", " 退订 "),
                    ("en", "STOP!"),
                    ("chatty", "please don't stop my order"),
                ):
                    r = await post_signed(
                        client,
                        endpoint,
                        SECRET,
                        {"id": f"m-{user}", "user": {"id": user}, "text": text},
                    )
                    assert r.status_code == 202, r.text
            await receiver.wait_for(2)
            now = datetime(2027, 2, 6, 17, 0, tzinfo=UTC)
            kefu.worker.wake()
            await receiver.wait_for(3)
            await kefu.worker.run_once()
    by_user = {r.json["user"]["id"]: r.json for r in receiver.delivered()}
    assert by_user["zh"]["type"] == "notice" and "已为您退订" in by_user["zh"]["text"]
    assert by_user["en"]["type"] == "notice" and "You are unsubscribed" in by_user["en"]["text"]
    # Carol did not opt out: her greeting goes out; Bob's planned greeting was cancelled
    assert by_user["chatty"]["type"] == "greeting"
    assert len(receiver.delivered()) == 3
    db = Database(db_url)
    try:
        async with db.sessions() as session:
            consent = dict(
                (await session.execute(select(Customer.id, Customer.marketing_consent))).all()
            )
            bob = await session.scalar(
                select(CampaignDelivery).where(CampaignDelivery.customer_id == en)
            )
            events = list(
                await session.scalars(
                    select(Interaction.meta).where(Interaction.direction == "event")
                )
            )
    finally:
        await db.dispose()
    assert consent == {zh: False, en: False, chatty: True}
    assert bob is not None and bob.status == "cancelled" and "'STOP!'" in (bob.reason or "")
    assert (
        sorted(e["kind"] for e in events if e.get("kind") == "consent_withdrawn")
        == ["consent_withdrawn"] * 2
    )


def test_cli_preview_run_report(tmp_path: Path) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path}/kefu.db"
    asyncio.run(
        seed(
            db_url,
            [
                {
                    "display_name": "王小明",
                    "birthday": date(1990, 9, 15),
                    "birthday_md": "09-15",
                    "timezone": "Asia/Shanghai",
                    "language": "zh",
                    "identities": [("webhook", "shop:u1")],
                },
                {
                    "display_name": "Tg Only",
                    "birthday": date(1990, 9, 15),
                    "birthday_md": "09-15",
                    "timezone": "Asia/Shanghai",
                    "language": "en",
                    "identities": [("telegram", "42")],
                },
            ],
        )
    )
    config = tmp_path / "config.toml"
    config.write_text(
        f'[storage]\nurl = "{db_url}"\n'
        '[webhook.sources.shop]\nsecret_env = "SHOP_SECRET"\ncallback_url = "http://127.0.0.1:9/cb"\n'
        '[campaigns.birthday]\nenabled = true\n',
        encoding="utf-8",
    )
    runner = CliRunner()
    # 2099: whatever day the test runs, the greetings are in the future
    preview = runner.invoke(
        cli,
        [
            "campaigns",
            "preview",
            "birthday",
            "--date",
            "2099-09-15",
            "--format",
            "jsonl",
            "-c",
            str(config),
        ],
    )
    assert preview.exit_code == 0, preview.output
    rows = [json.loads(line) for line in preview.stdout.splitlines()]
    assert (
        rows[0]["customer_id"] == 1
        and rows[0]["channel"] == "webhook"
        and rows[0]["address"] == "shop:u1"
    )
    assert (
        rows[0]["send_at"] == "2099-09-15T01:00:00+00:00" and rows[0]["occasion"] == "birthday:2099"
    )
    assert "王小明，生日快乐" in rows[0]["text"] and "109 岁" in rows[0]["text"]
    assert "the telegram channel is off" in rows[1]["skipped"]
    assert asyncio.run(scalar(db_url, select(func.count()).select_from(CampaignDelivery))) == 0

    table = runner.invoke(
        cli, ["campaigns", "preview", "birthday", "--date", "2099-09-15", "-c", str(config)]
    )
    assert table.exit_code == 0 and "1 greetings, 1 skipped (nothing was sent)" in table.output
    none = runner.invoke(
        cli, ["campaigns", "preview", "holiday", "--date", "2099-09-15", "-c", str(config)]
    )
    assert none.exit_code == 0 and "no selected holiday on 2099-09-15 in CN" in none.output

    for _ in range(2):
        run = runner.invoke(
            cli, ["campaigns", "run", "birthday", "--date", "2099-09-15", "-c", str(config)]
        )
        assert run.exit_code == 0, run.output
    assert "queued 0, skipped 0, already planned 0" in run.output
    assert asyncio.run(scalar(db_url, select(func.count()).select_from(OutboxRow))) == 1

    report = runner.invoke(cli, ["campaigns", "report", "-c", str(config)])
    assert report.exit_code == 0
    flat = " ".join(report.output.replace("│", " ").split())
    assert (
        "birthday planned 1" in flat
        and "birthday skipped 1 no reachable channel: telegram 42" in flat
    )

    bad = runner.invoke(
        cli, ["campaigns", "preview", "easter", "--date", "2099-09-15", "-c", str(config)]
    )
    assert bad.exit_code == 2 and "CAMPAIGN has value 'easter'" in bad.output
    bad = runner.invoke(
        cli, ["campaigns", "run", "birthday", "--date", "15.09.2099", "-c", str(config)]
    )
    assert bad.exit_code == 2 and "--date has value '15.09.2099'" in bad.output


async def bulk_customers(db_url: str, n: int) -> None:
    db = Database(db_url)
    await db.upgrade()
    try:
        async with db.transaction() as session:
            await session.execute(
                insert(Customer.__table__),
                [
                    {
                        "id": i,
                        "display_name": f"c{i}",
                        "timezone": "Asia/Shanghai",
                        "language": "zh",
                        "tags": [],
                        "marketing_consent": True,
                        "vip": False,
                        "created_at": SHANGHAI_NINE,
                    }
                    for i in range(1, n + 1)
                ],
            )
            await session.execute(
                insert(Identity.__table__),
                [
                    {
                        "customer_id": i,
                        "channel": "webhook",
                        "address": f"shop:u{i}",
                        "reachable": True,
                        "created_at": SHANGHAI_NINE,
                    }
                    for i in range(1, n + 1)
                ],
            )
    finally:
        await db.dispose()


async def assert_exactly_once(db_url: str, n: int) -> None:
    db = Database(db_url)
    try:
        async with db.sessions() as session:
            deliveries = await session.scalar(select(func.count()).select_from(CampaignDelivery))
            customers = await session.scalar(
                select(func.count(func.distinct(CampaignDelivery.customer_id)))
            )
            outbox = await session.scalar(select(func.count()).select_from(OutboxRow))
            linked = await session.scalar(
                select(func.count())
                .select_from(CampaignDelivery)
                .where(CampaignDelivery.outbox_id.is_not(None))
            )
            logged = await session.scalar(
                select(func.count())
                .select_from(Interaction)
                .where(Interaction.author_kind == "bot")
            )
    finally:
        await db.dispose()
    assert (deliveries, customers, outbox, linked, logged) == (n, n, n, n, n)


@pytest.mark.postgres
async def test_two_planners_at_once_on_postgres(postgres: PostgresServer) -> None:
    db_url = postgres.create_database()
    n = 3000
    await bulk_customers(db_url, n)
    cfg = parse_config(campaign_config(db_url, "http://127.0.0.1:9/cb"))
    planner = Planner(cfg, Templates(), Reach.of(cfg))
    one, two = Database(db_url), Database(db_url)
    try:
        a, b = await asyncio.gather(
            planner.plan(one, "holiday", SPRING, SHANGHAI_NINE, lead=None),
            planner.plan(two, "holiday", SPRING, SHANGHAI_NINE, lead=None),
        )
    finally:
        await one.dispose()
        await two.dispose()
    assert a.planned + b.planned == n
    await assert_exactly_once(db_url, n)


def cli_config(tmp_path: Path, db_url: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[storage]\nurl = "{db_url}"\n[webhook.sources.shop]\nsecret_env = "SHOP_SECRET"\n'
        'callback_url = "http://127.0.0.1:9/cb"\n[campaigns.holidays]\nenabled = true\n',
        encoding="utf-8",
    )
    return path


def kefu_cli(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bot", *args, "--config", str(config)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.postgres
async def test_two_kefu_processes_running_the_same_campaign(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    db_url = postgres.create_database()
    n = 4000
    await bulk_customers(db_url, n)
    config = cli_config(tmp_path, db_url)
    procs = [
        kefu_cli(config, "campaigns", "run", "holiday", "--date", SPRING_2099) for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    queued = [int(out.split("queued ")[1].split(",")[0]) for out, _ in outputs]
    assert sum(queued) == n
    await assert_exactly_once(db_url, n)


async def test_kill_in_the_middle_of_a_campaign_then_restart(tmp_path: Path) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path}/kefu.db"
    n = 12000
    await bulk_customers(db_url, n)
    config = cli_config(tmp_path, db_url)
    proc = kefu_cli(config, "campaigns", "run", "holiday", "--date", SPRING_2099)
    db = Database(db_url)
    done = 0
    try:
        while done == 0 and proc.poll() is None:
            async with db.sessions() as session:
                done = await session.scalar(select(func.count()).select_from(CampaignDelivery)) or 0
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        async with db.sessions() as session:
            at_kill = await session.scalar(select(func.count()).select_from(CampaignDelivery)) or 0
    finally:
        await db.dispose()
    assert 0 < at_kill < n, f"the kill landed after {at_kill} of {n}"
    rerun = kefu_cli(config, "campaigns", "run", "holiday", "--date", SPRING_2099)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert f"queued {n - at_kill}," in out
    await assert_exactly_once(db_url, n)
