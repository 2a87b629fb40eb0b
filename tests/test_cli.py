"""The `kefu` command line against a real SQLite database."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from bot.cli import app
from bot.messages import Inbound
from bot.plugins import pipeline as plugged_pipeline
from storage.db import Database
from storage.models import AuditEntry, Customer, Identity, Interaction, OutboxRow

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[storage]\nurl = "sqlite+aiosqlite:///{tmp_path}/kefu.db"\n'
        '[webhook.sources.shop]\nsecret_env = "SHOP_SECRET"\n'
    )
    return path


def kefu(config: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [*args, "--config", str(config)])
    return result.exit_code, result.stdout, result.stderr


def seed(config: Path, *messages: tuple[str, str, str]) -> None:
    """(external id, user, text) messages through the real pipeline."""
    url = next(
        line.split('"')[1] for line in config.read_text().splitlines() if line.startswith("url")
    )

    async def go() -> None:
        db = Database(url)
        await db.upgrade()
        pipeline = plugged_pipeline(db)
        for ext, user, text in messages:
            kind = "complaint" if "broken" in text else "message"
            await pipeline.receive(
                Inbound(
                    "webhook",
                    f"shop:{ext}",
                    f"shop:{user}",
                    text,
                    kind=kind,
                    display_name=user.title(),
                )
            )
        await pipeline.close()
        await db.dispose()

    asyncio.run(go())


def db_of(config: Path) -> Database:
    return Database(f"sqlite+aiosqlite:///{config.parent}/kefu.db")


def query(config: Path, stmt):
    async def go():
        db = db_of(config)
        async with db.sessions() as s:
            rows = list(await s.scalars(stmt))
        await db.dispose()
        return rows

    return asyncio.run(go())


def test_db_upgrade_is_idempotent(config: Path) -> None:
    assert kefu(config, "db", "upgrade")[0] == 0
    code, out, _ = kefu(config, "db", "upgrade")
    assert code == 0 and "up to date" in out


def test_log_export_jsonl_and_csv(config: Path) -> None:
    seed(config, ("1", "amy", "hello 你好"), ("2", "bob", "it arrived broken"))
    code, out, _ = kefu(config, "log", "export")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in rows] == ["hello 你好", "it arrived broken"]
    required = {
        "id",
        "created_at",
        "customer_id",
        "conversation_id",
        "channel",
        "direction",
        "author_kind",
        "text",
        "is_complaint",
    }
    assert required <= set(rows[0])
    assert [r["is_complaint"] for r in rows] == [False, True]
    code, out, _ = kefu(config, "log", "export", "--format", "csv")
    parsed = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["text"] for r in parsed] == ["hello 你好", "it arrived broken"]
    code, out, _ = kefu(config, "log", "export", "--since", "2999-01-01")
    assert code == 0 and out == ""


def test_log_export_into_a_pipe_closed_early_ends_quietly(config: Path) -> None:
    # More than a pipe's buffer of log, read by a consumer that stops after one line (`| head -1`).
    seed(config, *((f"m{n}", f"u{n % 7}", "请问订单什么时候发货？" * 20) for n in range(300)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "log", "export", "--config", str(config)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert json.loads(proc.stdout.readline())["id"] == 1
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1  # click's own exit for a closed pipe
    assert stderr == ""  # not "cannot open the database: Broken pipe", no traceback


def test_log_export_rejects_bad_arguments(config: Path) -> None:
    code, _, err = kefu(config, "log", "export", "--since", "last tuesday")
    assert code != 0 and "--since has value 'last tuesday'" in err
    code, _, err = kefu(config, "log", "export", "--format", "xml")
    assert code != 0 and "--format has value 'xml'" in err


def test_conversations_list_filters(config: Path) -> None:
    seed(config, ("1", "amy", "hello"), ("2", "bob", "it arrived broken"))
    code, out, _ = kefu(config, "conversations", "list")
    assert code == 0 and "Amy" in out and "Bob" in out
    code, out, _ = kefu(config, "conversations", "list", "--complaints")
    assert code == 0 and "Bob" in out and "Amy" not in out
    code, out, _ = kefu(config, "conversations", "list", "--status", "closed")
    assert code == 0 and "Amy" not in out
    code, _, err = kefu(config, "conversations", "list", "--status", "done")
    assert code == 1 and "--status has value 'done'" in err


def test_reply_logs_and_queues_on_the_customer_channel(config: Path) -> None:
    seed(config, ("1", "amy", "hello"))
    code, out, err = kefu(config, "reply", "1", "您好，已处理")
    assert code == 0, err
    assert "queued for webhook" in out
    [row] = query(config, select(OutboxRow))
    assert (row.channel, row.address, row.payload["text"]) == (
        "webhook",
        "shop:amy",
        "您好，已处理",
    )
    [logged] = query(config, select(Interaction).where(Interaction.direction == "out"))
    assert logged.author_kind == "agent" and logged.text == "您好，已处理"
    assert [a.action for a in query(config, select(AuditEntry))] == ["reply"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("reply", "99", "hi"), "no conversation 99"),
        (("reply", "1", "   "), "the answer is empty"),
        (("reply", "1", "hi", "--as", "nobody"), "no staff member"),
        (("customers", "show", "nobody@example.com"), "no customer with id or address"),
        (("customers", "merge", "1", "1"), "cannot merge a customer into itself"),
        (("customers", "forget", "42", "--yes"), "no customer with id 42"),
    ],
)
def test_errors_are_one_line_and_non_zero(
    config: Path, args: tuple[str, ...], message: str
) -> None:
    seed(config, ("1", "amy", "hello"))
    code, out, err = kefu(config, *args)
    assert code == 1
    assert message in err and err.count("\n") == 1 and "Traceback" not in err + out


def test_customers_show_by_id_and_address(config: Path) -> None:
    seed(config, ("1", "amy", "hello"))
    for ref in ("1", "shop:amy", "webhook:shop:amy"):
        code, out, err = kefu(config, "customers", "show", ref)
        assert code == 0, err
        assert "Amy" in out and "shop:amy" in out


def test_customers_merge_moves_identities_and_history(config: Path) -> None:
    seed(config, ("1", "amy", "hello"), ("2", "amy2", "me again, other account"))
    code, out, err = kefu(config, "customers", "merge", "1", "2")
    assert code == 0, err
    assert "1 identities" in out
    identities = query(config, select(Identity))
    assert {i.customer_id for i in identities} == {1}
    assert {i.customer_id for i in query(config, select(Interaction))} == {1}
    code, out, _ = kefu(config, "customers", "show", "2")
    assert code == 0 and "merged into 1" in out
    code, _, err = kefu(config, "customers", "merge", "1", "2")
    assert code == 1 and "already merged" in err


def test_customers_forget_erases_personal_data_keeps_counts(config: Path) -> None:
    seed(config, ("1", "amy", "my address is 1 Main St"), ("2", "bob", "hi"))
    kefu(config, "reply", "1", "thanks Amy")
    code, out, err = kefu(config, "customers", "forget", "1", "--yes")
    assert code == 0, err
    [amy] = query(config, select(Customer).where(Customer.id == 1))
    assert amy.display_name is None and amy.forgotten_at is not None
    assert query(config, select(Identity.address)) == ["shop:bob"]
    texts = query(config, select(Interaction.text).where(Interaction.customer_id == 1))
    assert len(texts) >= 2 and set(texts) == {"[erased]"}
    [row] = query(config, select(OutboxRow))
    assert (
        row.status == "dead"
        and "thanks" not in json.dumps(row.payload)
        and row.address == "[erased]"
    )
    code, out, _ = kefu(config, "log", "export")
    assert "Main St" not in out and "thanks Amy" not in out
    assert kefu(config, "reply", "1", "more")[0] == 1


def test_staff_add_list_and_audit(config: Path) -> None:
    code, out, err = kefu(
        config, "staff", "add", "--name", "Alice", "--telegram-id", "4242", "--role", "lead"
    )
    assert code == 0, err
    code, _, err = kefu(config, "staff", "add", "--name", "Alice")
    assert code == 1 and "already exists" in err
    code, _, err = kefu(config, "staff", "add", "--name", "Bob", "--telegram-id", "4242")
    assert code == 1 and "4242 already belongs to 'Alice'" in err
    code, _, err = kefu(config, "staff", "add", "--name", "Bob", "--role", "boss")
    assert code == 1 and "--role has value 'boss'" in err
    code, out, _ = kefu(config, "staff", "list")
    assert code == 0 and "Alice" in out and "lead" in out and "4242" in out
    code, out, _ = kefu(config, "audit")
    assert code == 0 and "staff.add" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[http]\nport = 'abc'\n", "[http] port has value 'abc'"),
        ("[http]\nprot = 80\n", "[http] prot is not a known setting"),
        ("[storage]\nurl = 'mysql://x'\n", "[storage] url has value 'mysql://x'"),
        ("[http\nport = 1\n", "not valid TOML"),
        (
            "[webhook.sources.shop]\ncallback_url = 'x'\n",
            "[webhook.sources.shop] secret_env is required",
        ),
    ],
)
def test_config_errors_name_the_key_and_value(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(content)
    code, _, err = kefu(path, "db", "upgrade")
    assert code == 2 and message in err


def test_missing_config_file(tmp_path: Path) -> None:
    code, _, err = kefu(tmp_path / "nope.toml", "staff", "list")
    assert code == 2 and "does not exist" in err


def test_run_on_the_shipped_defaults_without_credentials(tmp_path: Path) -> None:
    """The README's first command: the shipped config.toml, no secrets at all."""
    config = (ROOT / "config.toml").read_text().replace("port = 8080", f"port = {free_port()}")
    (tmp_path / "config.toml").write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEFU_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "run"], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        for line in iter(proc.stderr.readline, ""):  # type: ignore[union-attr]
            if "Uvicorn running" in line or "kefu.started" in line:
                break
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    log = (tmp_path / "kefu.db").exists()
    assert log
    assert "kefu.stopped" in rest


def free_port() -> int:
    from tests.servers.ports import free_port as fp

    return fp()


def test_admin_commands_refuse_lower_roles_and_audit_the_actor(config: Path) -> None:
    seed(config, ("1", "amy", "hello"), ("2", "amy2", "hi"))
    assert kefu(config, "staff", "add", "--name", "Lee", "--role", "lead")[0] == 0
    assert kefu(config, "staff", "add", "--name", "Ann", "--role", "admin")[0] == 0
    for args in (
        ("staff", "add", "--name", "Zed", "--as", "Lee"),
        ("customers", "forget", "1", "--yes", "--as", "Lee"),
        ("customers", "merge", "1", "2", "--as", "Lee"),
    ):
        code, _, err = kefu(config, *args)
        assert code == 1 and "Lee (lead) may not" in err and "needs role admin" in err, args
    assert [i.customer_id for i in query(config, select(Identity))] == [1, 2]  # nothing changed
    code, _, err = kefu(config, "customers", "merge", "1", "2", "--as", "Ann")
    assert code == 0, err
    code, _, err = kefu(config, "reply", "1", "on it", "--as", "Lee")
    assert code == 0, err
    entries = [(a.actor, a.action) for a in query(config, select(AuditEntry))]
    assert ("Ann", "customers.merge") in entries and ("Lee", "reply") in entries
