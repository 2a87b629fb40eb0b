"""Tying Telegram users to known customers: `kefu customers link-telegram` + /start, and a shared
contact whose phone number matches. Real CLI, real kefu, real PTB against the stand-in."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.app import Kefu
from handlers.telegram_links import normalise_phone
from storage.models import Customer, Identity, Interaction, TelegramLink
from tests.servers.botapi import TOKEN, BotApiServer, fixture
from tests.servers.kefu import base_config, running_kefu

ROOT = Path(__file__).parent.parent.parent
ENV = {"KEFU_TELEGRAM_TOKEN": TOKEN}


def cfg(db_path: Path, botapi: BotApiServer) -> dict[str, Any]:
    return base_config(f"sqlite+aiosqlite:///{db_path}", telegram={
        "enabled": True, "base_url": botapi.base_url, "poll_timeout_seconds": 1,
        "bot_username": "kefu_test_bot"})


async def kefu_cli(config_path: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, "--config", str(config_path), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"},
    )
    stdout, stderr = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()


async def known_customer(kefu: Kefu, *, phone: str | None = None) -> int:
    async with kefu.db.transaction() as session:
        customer = Customer(display_name="张三 (imported)", language="zh", tags=["wholesale"])
        session.add(customer)
        await session.flush()
        session.add(Identity(channel="email", address="zhang@example.com", customer_id=customer.id))
        if phone:
            session.add(Identity(channel="phone", address=phone, customer_id=customer.id))
        return customer.id


async def telegram_owner(kefu: Kefu, user_id: str = "1001") -> int | None:
    async with kefu.db.sessions() as session:
        return await session.scalar(
            select(Identity.customer_id).where(
                Identity.channel == "telegram", Identity.address == user_id
            )
        )


async def wait_logged(kefu: Kefu, external_id: str) -> Interaction:
    for _ in range(300):
        async with kefu.db.sessions() as session:
            row = await session.scalar(
                select(Interaction).where(Interaction.external_id == external_id)
            )
        if row is not None:
            return row
        await asyncio.sleep(0.02)
    raise AssertionError(f"{external_id} was never logged")


async def test_deep_link_from_the_cli_ties_the_user_once(
    tmp_path: Path, botapi: BotApiServer
) -> None:
    db_path = tmp_path / "kefu.db"
    config_path = tmp_path / "config.toml"
    config_path.write_text(
        f'[storage]\nurl = "sqlite+aiosqlite:///{db_path}"\n[telegram]\nbot_username = '
        '"kefu_test_bot"\n'
    )
    async with running_kefu(cfg(db_path, botapi), ENV) as kefu:
        customer_id = await known_customer(kefu)
        code, stdout, stderr = await kefu_cli(
            config_path, "customers", "link-telegram", str(customer_id)
        )
        assert code == 0, stderr
        link = stdout.strip()
        prefix = "https://t.me/kefu_test_bot?start="
        assert link.startswith(prefix)
        token = link.removeprefix(prefix)
        assert 20 <= len(token) <= 64 and all(c.isalnum() or c in "-_" for c in token)

        # The user wrote before: they have a record of their own, which is merged into the known
        # one.
        botapi.push(fixture("message__private_text"))
        first = await wait_logged(kefu, "1001:1365")
        assert first.customer_id != customer_id
        botapi.push(
            fixture("message__private_start_payload", {"/start LINKTOKEN": f"/start {token}"})
        )
        start = await wait_logged(kefu, "1001:2")
        assert start.customer_id == customer_id
        assert await telegram_owner(kefu) == customer_id
        async with kefu.db.sessions() as session:
            moved = await session.get(Interaction, first.id)
            old = await session.get(Customer, first.customer_id)
            used = await session.scalar(select(TelegramLink).where(TelegramLink.token == token))
        assert moved is not None and moved.customer_id == customer_id  # the log stays whole
        assert old is not None and old.merged_into == customer_id
        assert used is not None and used.used_by == "1001"

        # Someone else with the same link gets nothing.
        botapi.push(fixture("message__private_start_payload",
                            {"/start LINKTOKEN": f"/start {token}", 1001: 3003, 2: 3}))
        await wait_logged(kefu, "3003:3")
        assert await telegram_owner(kefu, "3003") not in (None, customer_id)

    code, _, stderr = await kefu_cli(config_path, "customers", "link-telegram", "999")
    assert code == 1 and "no customer with id 999" in stderr


async def test_unknown_or_forged_payload_links_nothing(
    tmp_path: Path, botapi: BotApiServer
) -> None:
    async with running_kefu(cfg(tmp_path / "kefu.db", botapi), ENV) as kefu:
        customer_id = await known_customer(kefu)
        botapi.push(fixture("message__private_start_payload"))
        start = await wait_logged(kefu, "1001:2")
        assert start.customer_id != customer_id
        assert start.direction == "event"


async def test_shared_contact_joins_the_record_with_that_phone(
    tmp_path: Path, botapi: BotApiServer
) -> None:
    async with running_kefu(cfg(tmp_path / "kefu.db", botapi), ENV) as kefu:
        customer_id = await known_customer(kefu, phone="+8613800138000")
        botapi.push(fixture("message__private_text"))
        first = await wait_logged(kefu, "1001:1365")
        botapi.push(fixture("message__private_contact"))
        contact = await wait_logged(kefu, "1001:1371")
        assert contact.customer_id == customer_id
        assert first.customer_id != customer_id
        assert await telegram_owner(kefu) == customer_id
        async with kefu.db.sessions() as session:
            customer = await session.get(Customer, customer_id)
            rows = list(await session.scalars(select(Interaction.customer_id).where(
                Interaction.channel == "telegram", Interaction.author_kind == "customer")))
        assert customer is not None and customer.tags == ["wholesale"]
        assert rows == [customer_id, customer_id]


async def test_someone_elses_contact_links_nobody(tmp_path: Path, botapi: BotApiServer) -> None:
    async with running_kefu(cfg(tmp_path / "kefu.db", botapi), ENV) as kefu:
        customer_id = await known_customer(kefu, phone="+447700900123")
        botapi.push(fixture("message__private_contact_other"))
        row = await wait_logged(kefu, "1001:1372")
        assert row.customer_id != customer_id


async def test_a_new_phone_is_kept_on_the_telegram_record(
    tmp_path: Path, botapi: BotApiServer
) -> None:
    async with running_kefu(cfg(tmp_path / "kefu.db", botapi), ENV) as kefu:
        botapi.push(fixture("message__private_contact"))
        row = await wait_logged(kefu, "1001:1371")
        async with kefu.db.sessions() as session:
            phone = await session.scalar(select(Identity).where(Identity.channel == "phone"))
        assert phone is not None
        assert (phone.address, phone.customer_id) == ("+8613800138000", row.customer_id)


@pytest.mark.parametrize(
    ("raw", "e164"),
    [("8613800138000", "+8613800138000"), ("+86 138 0013 8000", "+8613800138000"),
     ("447911123456", "+447911123456"), ("12", None), ("", None), ("not a phone", None)],
)
def test_normalise_phone(raw: str, e164: str | None) -> None:
    assert normalise_phone(raw) == e164
