"""Agents' answers leave through the outbox by SMTP, threaded, to a real aiosmtpd."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.app import Kefu
from bot.config import ConfigError, parse_config
from storage.models import Identity, Interaction, OutboxRow
from tests.channels.email_fixtures import (
    ADDRESS,
    Mailbox,
    email_config,
    env_for,
    smtp,  # noqa: F401 - pytest fixture
    wait_connected,
    wait_for,
)
from tests.servers.kefu import running_kefu
from tests.servers.ports import free_port
from tests.servers.smtp import SmtpServer

ROOT = Path(__file__).resolve().parents[2]

CUSTOMER_MAIL = (
    "From: =?UTF-8?B?5byg5LiJ?= <ZhangSan@Example.com>\r\nTo: support@kefu.test\r\n"
    "Subject: =?UTF-8?B?5p2v5a2Q56KO5LqG?=\r\nMessage-ID: <cust-1@example.com>\r\n"
    "References: <older-0@example.com>\r\nDate: Mon, 1 Apr 2024 10:00:00 +0800\r\n"
    "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    "收到的杯子碎了，怎么办？\r\n"
).encode()


async def kefu_cli(tmp_path: Path, config: dict[str, Any], *args: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(f'[storage]\nurl = "{config["storage"]["url"]}"\n')
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, "--config", str(path),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode()


async def delivered(server: SmtpServer, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while len(server.handler.delivered) < count:
        assert time.monotonic() < deadline, f"{len(server.handler.delivered)} of {count} delivered"
        await asyncio.sleep(0.05)


async def outbox_row(kefu: Kefu, status: str, timeout: float = 10) -> OutboxRow:
    deadline = time.monotonic() + timeout
    while True:
        async with kefu.db.sessions() as session:
            row = await session.scalar(select(OutboxRow).where(OutboxRow.channel == "email"))
        if row is not None and row.status == status:
            return row
        assert time.monotonic() < deadline, f"outbox row is {row.status if row else None}"
        await asyncio.sleep(0.05)


async def customer_writes(kefu: Kefu, box: Mailbox) -> int:
    await wait_connected(kefu)
    await box.append(CUSTOMER_MAIL)
    found = await wait_for(kefu, lambda r: any(x.direction == "in" for x in r))
    [mail] = [x for x in found if x.direction == "in"]
    assert mail.conversation_id is not None
    return mail.conversation_id


async def test_answer_is_threaded_and_the_reply_comes_back_to_the_conversation(
    mailbox: Mailbox, smtp: SmtpServer, tmp_path: Path  # noqa: F811
) -> None:
    config = email_config(tmp_path, mailbox, smtp.port)
    async with running_kefu(config, env_for(mailbox)) as kefu:
        conversation = await customer_writes(kefu, mailbox)
        out = await kefu_cli(
            tmp_path, config, "reply", str(conversation), "我们马上给您补寄一个新的杯子。"
        )
        assert "queued for email" in out
        await delivered(smtp, 1)
        sent = await outbox_row(kefu, "sent")
        mail = smtp.handler.delivered[0]
        message = mail.message
        assert mail.recipients == ["zhangsan@example.com"] and mail.sender == ADDRESS
        assert smtp.handler.logins == [(mailbox.username, mailbox.password)]
        assert message["Subject"] == f"Re: 杯子碎了 [#{conversation}]"
        assert message["In-Reply-To"] == "<cust-1@example.com>"
        assert message["References"] == "<older-0@example.com> <cust-1@example.com>"
        assert message["Message-ID"] == f"<{sent.external_id}>"
        assert sent.external_id is not None and sent.external_id.endswith("@kefu.test")
        assert message["Auto-Submitted"] == "no"
        text = message.get_body(("plain",))
        html = message.get_body(("html",))
        assert text is not None and html is not None
        assert "我们马上给您补寄一个新的杯子。" in text.get_content()
        assert f"保留主题中的 [#{conversation}]" in text.get_content()  # the footer in Chinese
        assert "我们马上给您补寄一个新的杯子。" in html.get_content()
        # The customer answers kefu's mail from a new subject: In-Reply-To alone threads it.
        await mailbox.append(
            b"From: ZhangSan@example.com\r\nTo: support@kefu.test\r\nSubject: thanks\r\n"
            b"Message-ID: <cust-2@example.com>\r\nIn-Reply-To: " + message["Message-ID"].encode()
            + b"\r\n\r\nThank you!\r\n\r\nOn Mon, 1 Apr 2024 at 11:00, support wrote:\r\n> old\r\n"
        )
        found = await wait_for(
            kefu, lambda r: any(x.external_id == "cust-2@example.com" for x in r)
        )
    reply = next(x for x in found if x.external_id == "cust-2@example.com")
    assert reply.conversation_id == conversation
    assert reply.text == "Thank you!"


async def test_451_then_250_is_delivered_once(
    mailbox: Mailbox, smtp: SmtpServer, tmp_path: Path  # noqa: F811
) -> None:
    smtp.handler.data_replies.append("451 4.3.0 Try again later")
    config = email_config(tmp_path, mailbox, smtp.port)
    async with running_kefu(config, env_for(mailbox)) as kefu:
        conversation = await customer_writes(kefu, mailbox)
        await kefu_cli(tmp_path, config, "reply", str(conversation), "We are on it.")
        row = await outbox_row(kefu, "sent")
        await asyncio.sleep(0.3)
    assert smtp.handler.attempts == 2
    assert len(smtp.handler.delivered) == 1
    assert row.attempts == 2
    assert (
        smtp.handler.delivered[0]
        .message.get_body(("plain",))
        .get_content()
        .startswith("We are on it.")
    )  # type: ignore[union-attr]


async def test_550_is_dead_and_staff_see_it(
    mailbox: Mailbox, smtp: SmtpServer, tmp_path: Path  # noqa: F811
) -> None:
    smtp.handler.data_replies.append("550 5.7.1 Message rejected as spam")
    config = email_config(tmp_path, mailbox, smtp.port)
    async with running_kefu(config, env_for(mailbox)) as kefu:
        conversation = await customer_writes(kefu, mailbox)
        await kefu_cli(tmp_path, config, "reply", str(conversation), "We are on it.")
        row = await outbox_row(kefu, "dead")
        async with kefu.db.sessions() as session:
            events = list(
                await session.scalars(
                    select(Interaction).where(
                        Interaction.conversation_id == conversation,
                        Interaction.direction == "event",
                    )
                )
            )
            identity = await session.scalar(select(Identity).where(Identity.channel == "email"))
    assert row.attempts == 1 and "550" in (row.last_error or "")
    assert any("delivery failed" in e.text and "550" in e.text for e in events)
    assert identity is not None and identity.reachable  # spam refusal: the address itself is fine
    assert smtp.handler.delivered == []


async def test_unknown_recipient_is_dead_and_unreachable(
    mailbox: Mailbox, smtp: SmtpServer, tmp_path: Path  # noqa: F811
) -> None:
    smtp.handler.rcpt_replies["zhangsan@example.com"] = (
        "550 5.1.1 <zhangsan@example.com>: User unknown"
    )
    config = email_config(tmp_path, mailbox, smtp.port)
    async with running_kefu(config, env_for(mailbox)) as kefu:
        conversation = await customer_writes(kefu, mailbox)
        await kefu_cli(tmp_path, config, "reply", str(conversation), "We are on it.")
        await outbox_row(kefu, "dead")
        async with kefu.db.sessions() as session:
            identity = await session.scalar(select(Identity).where(Identity.channel == "email"))
    assert identity is not None and identity.reachable is False
    assert "5.1.1" in (identity.unreachable_reason or "")


async def test_unreachable_smtp_server_is_retried(mailbox: Mailbox, tmp_path: Path) -> None:
    config = email_config(tmp_path, mailbox, free_port())  # nothing listens there
    # Retried, not given up: enough attempts that the fast test backoff cannot reach "dead" before
    # the row is looked at (reads no longer wait behind the worker's writes).
    config["outbox"]["max_attempts"] = 1000
    async with running_kefu(config, env_for(mailbox)) as kefu:
        conversation = await customer_writes(kefu, mailbox)
        await kefu_cli(tmp_path, config, "reply", str(conversation), "We are on it.")
        row = await outbox_row(kefu, "failed")
    assert row.last_error is not None and "SMTPConnectError" in row.last_error


@pytest.mark.parametrize("missing", ["address", "imap_host", "smtp_host"])
def test_missing_required_key_names_it(missing: str, tmp_path: Path) -> None:
    section = {
        "enabled": True,
        "address": ADDRESS,
        "imap_host": "imap.example.com",
        "smtp_host": "smtp.example.com",
    }
    del section[missing]
    config = parse_config(
        {"storage": {"url": f"sqlite+aiosqlite:///{tmp_path}/k.db"}, "email": section}
    )
    with pytest.raises(ConfigError, match=f"\\[email\\] {missing} is not set"):
        Kefu(config, {"KEFU_EMAIL_PASSWORD": "x"})


def test_missing_password_stops_start_up(tmp_path: Path) -> None:
    section = {
        "enabled": True,
        "address": ADDRESS,
        "imap_host": "imap.example.com",
        "smtp_host": "smtp.example.com",
    }
    config = parse_config(
        {"storage": {"url": f"sqlite+aiosqlite:///{tmp_path}/k.db"}, "email": section}
    )
    with pytest.raises(ConfigError, match="KEFU_EMAIL_PASSWORD is not set"):
        Kefu(config, {})


@pytest.fixture
def relay() -> Iterator[SmtpServer]:
    """A relay that offers no AUTH (a local Postfix, an internal relay)."""
    server = SmtpServer(auth="none")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def refusing() -> Iterator[SmtpServer]:
    """A submission server that answers every login 535."""
    server = SmtpServer(auth="refuse")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_relay_without_auth_delivers_when_no_smtp_username_is_set(
    mailbox: Mailbox, relay: SmtpServer, tmp_path: Path
) -> None:
    config = email_config(tmp_path, mailbox, relay.port, smtp_username="")
    async with running_kefu(config, env_for(mailbox)) as kefu:
        conversation = await customer_writes(kefu, mailbox)
        await kefu_cli(tmp_path, config, "reply", str(conversation), "We are on it.")
        await delivered(relay, 1)
        row = await outbox_row(kefu, "sent")
    assert row.attempts == 1 and relay.handler.logins == []


async def config_error_case(
    kefu: Kefu,
    tmp_path: Path,
    config: dict[str, Any],
    box: Mailbox,
    caplog: pytest.LogCaptureFixture,
) -> tuple[OutboxRow, list[Interaction], list[str]]:
    conversation = await customer_writes(kefu, box)
    await kefu_cli(tmp_path, config, "reply", str(conversation), "We are on it.")
    await kefu_cli(tmp_path, config, "reply", str(conversation), "And one more thing.")
    deadline = time.monotonic() + 10
    while True:
        async with kefu.db.sessions() as session:
            outbox = list(
                await session.scalars(select(OutboxRow).where(OutboxRow.channel == "email"))
            )
        if len(outbox) == 2 and all(r.status == "dead" for r in outbox):
            break
        assert time.monotonic() < deadline, [(r.status, r.attempts, r.last_error) for r in outbox]
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    async with kefu.db.sessions() as session:
        events = list(
            await session.scalars(
                select(Interaction).where(
                    Interaction.conversation_id == conversation, Interaction.direction == "event"
                )
            )
        )
    lines = [r.getMessage() for r in caplog.records if "email.smtp.config_error" in r.getMessage()]
    return outbox[0], events, lines


async def test_a_server_without_auth_is_a_configuration_error_not_a_retry(
    mailbox: Mailbox, relay: SmtpServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kefu")
    config = email_config(tmp_path, mailbox, relay.port)  # a username: kefu would log in
    async with running_kefu(config, env_for(mailbox)) as kefu:
        row, events, lines = await config_error_case(kefu, tmp_path, config, mailbox, caplog)
    assert row.attempts == 1  # parked at once, not retried ten times
    assert "smtp_username" in (row.last_error or "") and "offers no login" in (row.last_error or "")
    assert any("offers no login" in e.text for e in events)  # staff see it in the conversation
    assert len(lines) == 1 and "setting=[email] smtp_username" in lines[0]
    assert relay.handler.delivered == []


async def test_a_refused_login_is_a_configuration_error_not_a_retry(
    mailbox: Mailbox, refusing: SmtpServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kefu")
    config = email_config(tmp_path, mailbox, refusing.port)
    async with running_kefu(config, env_for(mailbox)) as kefu:
        row, events, lines = await config_error_case(kefu, tmp_path, config, mailbox, caplog)
    assert row.attempts == 1
    assert "535" in (row.last_error or "") and "smtp_username" in (row.last_error or "")
    assert any("535" in e.text for e in events)
    assert len(lines) == 1 and mailbox.password not in lines[0]
    # one send per row (aiosmtplib tries PLAIN, then LOGIN): not ten retries each
    assert len(refusing.handler.logins) <= 4 and refusing.handler.delivered == []
