"""`kefu customers show`: the customer file, built by the real pipeline and the real commands."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bot.cli import app
from bot.messages import Inbound
from tests.servers.kefu import base_config, running_kefu

PEOPLE = (
    "name,email,phone,birthday,timezone,language,tags,marketing_consent\n"
    '王小明,xm@example.com,13800138000,02-06,Asia/Shanghai,zh,"vip,retail",是\n'
    "Alice,alice@example.com,+1 415 555 2671,1990-01-05,Europe/Berlin,en,,yes\n"
)


def kefu(config: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [*args, "--config", str(config)])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[storage]\nurl = "sqlite+aiosqlite:///{tmp_path}/kefu.db"\n')
    people = tmp_path / "people.csv"
    people.write_text(PEOPLE, encoding="utf-8")
    code, _, err = kefu(path, "customers", "import", str(people))
    assert code == 0, err
    return path


async def cli(config: Path, *args: str) -> str:
    """The command line from inside a running kefu's event loop (as a second terminal would)."""
    code, out, err = await asyncio.to_thread(kefu, config, *args)
    assert code == 0, err
    return out


async def history(config: Path) -> None:
    """Two channels, a merge, an answer, a resolve, a survey answer and an opt-out."""
    url = f"sqlite+aiosqlite:///{config.parent}/kefu.db"
    start = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    at = iter(start + timedelta(minutes=n) for n in range(100))
    async with running_kefu(base_config(url), {}) as running:
        # Written by email (the imported address) and from a shop's webhook (a new customer).
        await running.receive(
            Inbound(
                "email",
                "<m1@example.com>",
                "xm@example.com",
                "你好，我的包裹还没到，太慢了！",
                received_at=next(at),
                kind="complaint",
            )
        )
        await cli(config, "reply", "1", "您好，包裹明天送达")
        await cli(config, "conversations", "resolve", "1")
        await running.receive(
            Inbound(
                "email", "<m2@example.com>", "xm@example.com", "5", received_at=datetime.now(UTC)
            )
        )
        # Earlier in time than the answer: the timeline is ordered by when things were written.
        await running.receive(
            Inbound("webhook", "shop:o-1", "shop:c-42", "订单 1001 在哪里？", received_at=next(at))
        )
        await cli(config, "customers", "merge", "1", "3")
        await running.receive(
            Inbound(
                "email", "<m3@example.com>", "xm@example.com", "退订", received_at=datetime.now(UTC)
            )
        )


def test_customer_file_has_everything(config: Path) -> None:
    asyncio.run(history(config))
    # A phone number in any form the import reads finds the record it stored as +8613800138000.
    for ref in ("13800138000", "138 0013 8000", "+86 138-0013-8000", "phone:13800138000"):
        code, out, err = kefu(config, "customers", "show", ref, "--format", "json")
        assert code == 0, (ref, err)
        assert json.loads(out)["id"] == 1
    code, out, _ = kefu(config, "customers", "show", "xm@example.com", "--format", "json")
    data = json.loads(out)
    assert data["birthday"] == "02-06"  # stored without a year: shown as stored
    assert sorted(data["tags"]) == ["retail", "vip"]
    assert {(i["channel"], i["address"]) for i in data["identities"]} >= {
        ("email", "xm@example.com"),
        ("phone", "+8613800138000"),
        ("webhook", "shop:c-42"),
    }
    assert data["marketing_consent"] is False
    assert [e["event"] for e in data["consent_history"]] == ["consent_withdrawn"]
    by_id = {c["id"]: c for c in data["conversations"]}
    assert len(by_id) == 2
    assert by_id[1]["complaint"] is True and by_id[1]["status"] in ("resolved", "open")
    assert [(s["conversation_id"], s["score"]) for s in data["csat"]] == [(1, 5)]
    texts = [m["text"] for m in data["messages"]]
    assert texts.index("你好，我的包裹还没到，太慢了！") < texts.index("订单 1001 在哪里？")
    assert texts.index("订单 1001 在哪里？") < texts.index("您好，包裹明天送达")
    assert {m["channel"] for m in data["messages"]} >= {"email", "webhook"}
    assert [m["at"] for m in data["messages"]] == sorted(m["at"] for m in data["messages"])

    code, out, _ = kefu(config, "customers", "show", "1", "--messages", "2", "--format", "json")
    last_two = json.loads(out)["messages"]
    assert [m["text"] for m in last_two] == texts[-2:]

    code, out, err = kefu(config, "customers", "show", "13800138000", "--messages", "3")
    assert code == 0, err
    for needle in (
        "02-06",
        "retail, vip",
        "+8613800138000",
        "consent_withdrawn",
        "satisfaction (CSAT)",
        "last 3 messages",
        "退订",
    ):
        assert needle in out, (needle, out)


def test_birthday_with_a_year_and_unknown_phone(config: Path) -> None:
    code, out, _ = kefu(config, "customers", "show", "alice@example.com", "--format", "json")
    assert code == 0 and json.loads(out)["birthday"] == "1990-01-05"
    code, out, _ = kefu(config, "customers", "show", "(415) 555-2671", "--format", "json")
    assert code == 1  # a US number without +1 is not read with the default region CN
    code, out, _ = kefu(config, "customers", "show", "+1 (415) 555-2671", "--format", "json")
    assert code == 0 and json.loads(out)["name"] == "Alice"
    code, _, err = kefu(config, "customers", "show", "13900139000")
    assert code == 1 and "no customer" in err and "+8613900139000" in err
