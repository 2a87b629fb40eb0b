"""A mail server that refuses a customer's address quotes it back ("550 5.1.1 <a@b.c>: User
unknown"); kefu logs the failure with the address redacted (a***@example.com), as everywhere
else, not the whole address inside the error text. At DEBUG level the IMAP library's own lines
(every mail it receives, whole) stay out of the log too. Real Dovecot, aiosmtpd and kefu."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.channels.email_fixtures import (
    Mailbox,
    dovecot,  # noqa: F401 - fixture
    email_config,
    env_for,
    smtp,  # noqa: F401 - fixture
)
from tests.channels.email_fixtures import mailbox as mailbox  # fixture
from tests.channels.test_email_send import customer_writes, kefu_cli, outbox_row
from tests.servers.kefu import running_kefu
from tests.servers.smtp import SmtpServer


@pytest.mark.parametrize(
    "reply",
    ["550 5.1.1 <zhangsan@example.com>: User unknown", "451 4.2.0 <ZhangSan@Example.com> busy"],
)
async def test_a_refused_recipient_is_logged_without_the_address(
    mailbox: Mailbox,
    smtp: SmtpServer,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    reply: str,
) -> None:
    smtp.handler.rcpt_replies["zhangsan@example.com"] = reply
    config = email_config(tmp_path, mailbox, smtp.port)
    caplog.set_level(logging.DEBUG)  # as with [logging] level = "DEBUG": libraries' lines too
    async with running_kefu(config, env_for(mailbox)) as kefu:
        conversation = await customer_writes(kefu, mailbox)
        await kefu_cli(tmp_path, config, "reply", str(conversation), "We are on it.")
        await outbox_row(kefu, "dead" if reply.startswith("5") else "failed")
    refused = [r for r in caplog.records if "smtp" in r.getMessage() or "outbox" in r.name]
    assert any(reply[:3] in r.getMessage() for r in refused)  # the failure itself is logged
    # kefu's records and its libraries'; "mail.log" is the test's own SMTP server (aiosmtpd).
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name != "mail.log").lower()
    assert "zhangsan@example.com" not in logged
