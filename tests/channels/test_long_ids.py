"""What a channel accepts is logged on PostgreSQL exactly as on SQLite: long Message-IDs, long
display names, long webhook user ids; and every email fixture goes through the real pipeline on
both databases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from bot.plugins import pipeline as plugged_pipeline
from channels.email import MAX_EXTERNAL_ID, MailStore, to_inbound
from storage.db import Database
from storage.models import Identity, Interaction
from tests.channels.email_fixtures import (
    ADDRESS,
    EXPECT,
    Mailbox,
    dovecot,  # noqa: F401 - pytest fixture
    email_config,
    env_for,
    fixture_bytes,
    fixture_names,
    mailbox,  # noqa: F401 - pytest fixture
    wait_connected,
    wait_for,
)
from tests.servers.kefu import base_config, post_signed, running_kefu, url
from tests.servers.ports import free_port

SECRET = "long-ids-secret-77"
LONG_ID = "x" * 580 + "@mail.example.com"  # 598 characters


def long_mail(n: int, msgid: str) -> bytes:
    name = "很长的名字" * 60  # 300 characters of display name
    return (
        f"From: {name} <buyer{n}@example.cn>\r\nTo: support@kefu.test\r\nSubject: long id {n}\r\n"
        f"Message-ID: <{msgid}>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"my order {n} has not arrived\r\n"
    ).encode()


async def test_a_600_character_message_id_is_logged(
    mailbox: Mailbox, tmp_path: Path, db_url: str  # noqa: F811
) -> None:
    msgid = "a" * 590 + "@example.cn"  # 601 characters
    config = email_config(tmp_path, mailbox, free_port(), db_url=db_url)
    async with running_kefu(config, env_for(mailbox)) as kefu:
        await wait_connected(kefu)
        await mailbox.append(long_mail(1, msgid), long_mail(2, "short-2@example.cn"))
        found = await wait_for(kefu, lambda r: len([x for x in r if x.direction == "in"]) == 2)
    first, second = [x for x in found if x.direction == "in"]
    assert len(msgid) > 600 and first.external_id == msgid
    assert second.external_id == "short-2@example.cn"  # the reader went on past it


async def test_an_overlong_message_id_is_kept_as_its_hash(tmp_path: Path, db: Database) -> None:
    msgid = "b" * 5000 + "@example.cn"  # no line can hold this (RFC 5322 2.1.1)
    store = MailStore(tmp_path, 1 << 20)
    inbound = to_inbound(long_mail(3, msgid), store, own_address=ADDRESS)
    assert len(inbound.external_id) <= MAX_EXTERNAL_ID
    assert (
        to_inbound(long_mail(3, msgid), store, own_address=ADDRESS).external_id
        == inbound.external_id
    )
    pipeline = plugged_pipeline(db)
    try:
        assert (await pipeline.receive(inbound)).status == "accepted"
        assert (await pipeline.receive(inbound)).status == "duplicate"
    finally:
        await pipeline.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as c:
        yield c


async def test_a_260_character_webhook_user_id_is_logged(
    db_url: str, client: httpx.AsyncClient
) -> None:
    user = "u" * 260
    config = base_config(db_url, webhook={"sources": {"shop": {"secret_env": "SHOP_SECRET"}}})
    async with running_kefu(config, {"SHOP_SECRET": SECRET}) as kefu:
        payload = {"id": "m" * 300, "user": {"id": user, "name": "李" * 200}, "text": "包裹还没到"}
        r = await post_signed(client, url(kefu, "/webhooks/shop"), SECRET, payload)
        assert r.status_code == 202, r.text
        too_long = {"id": "m-2", "user": {"id": "u" * 513}, "text": "x"}
        refused = await post_signed(client, url(kefu, "/webhooks/shop"), SECRET, too_long)
        async with kefu.db.sessions() as session:
            row = await session.scalar(
                select(Interaction).where(Interaction.author_id == f"shop:{user}")
            )
            identity = await session.scalar(
                select(Identity).where(Identity.address == f"shop:{user}")
            )
    assert row is not None and row.external_id == "shop:" + "m" * 300
    assert identity is not None
    assert refused.status_code == 422 and "512" in refused.text


@pytest.mark.parametrize("name", fixture_names())
async def test_every_fixture_is_logged_on_both_databases(
    name: str, tmp_path: Path, db: Database
) -> None:
    expect = EXPECT[name]
    inbound = to_inbound(fixture_bytes(name), MailStore(tmp_path, 1 << 20), own_address=ADDRESS)
    pipeline = plugged_pipeline(db)
    try:
        receipt = await pipeline.receive(inbound)
    finally:
        await pipeline.close()
    async with db.sessions() as session:
        row = await session.get(Interaction, receipt.interaction_id)
    assert row is not None and row.author_id == expect["address"]
    for text in expect.get("has", []):
        assert text in row.text
