"""The email channel over real TLS: Dovecot on imaps and with STARTTLS, aiosmtpd with STARTTLS and
on an implicit-TLS port, kefu trusting the servers' self-signed certificate through [email] ca_file.

The certificates are made at test time with openssl (no network): Dovecot's own (CN=localhost,
SAN 127.0.0.1) is the trusted one, and a second, unrelated self-signed certificate plays the wrong
CA.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.app import Kefu
from tests.channels.email_fixtures import (
    ADDRESS,
    Mailbox,
    dovecot,  # noqa: F401 - pytest fixture
    email_config,
    env_for,
    mailbox,  # noqa: F401 - pytest fixture
    rows,
    wait_connected,
    wait_for,
)
from tests.channels.test_email_send import customer_writes, delivered, kefu_cli, outbox_row
from tests.servers.dovecot import DovecotServer
from tests.servers.kefu import running_kefu
from tests.servers.ports import free_port
from tests.servers.smtp import SmtpServer


def mail(n: int) -> bytes:
    return (
        f"From: Ann <ann@example.com>\r\nTo: {ADDRESS}\r\nSubject: over tls {n}\r\n"
        f"Message-ID: <tls-{n}@example.com>\r\nDate: Mon, 1 Apr 2024 10:00:00 +0000\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\nsent to the TLS test number {n}\r\n"
    ).encode()


@pytest.fixture(scope="module")
def wrong_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate for the same names that did not sign the servers' certificate."""
    folder = tmp_path_factory.mktemp("wrong-ca")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    return folder / "cert.pem"


def tls_server(dovecot: DovecotServer, mode: str) -> Iterator[SmtpServer]:  # noqa: F811
    server = SmtpServer(tls=mode, cert=dovecot.cert, key=dovecot.key)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def smtp_starttls(dovecot: DovecotServer) -> Iterator[SmtpServer]:  # noqa: F811
    yield from tls_server(dovecot, "starttls")


@pytest.fixture
def smtps(dovecot: DovecotServer) -> Iterator[SmtpServer]:  # noqa: F811
    yield from tls_server(dovecot, "tls")


def tls_imap(box: Mailbox, security: str, ca_file: Path) -> dict[str, object]:
    port = box.server.tls_port if security == "tls" else box.server.port
    return {"imap_security": security, "imap_port": port, "ca_file": str(ca_file)}


def dovecot_log(server: DovecotServer) -> str:
    path = server.tmp / "dovecot.log"
    return path.read_text(errors="replace") if path.exists() else ""


def tls_logins(server: DovecotServer, username: str) -> list[str]:
    """Dovecot's login lines for this user that say the session was encrypted."""
    return [
        line for line in dovecot_log(server).splitlines()
        if "Login:" in line and f"user=<{username}>" in line and ", TLS, " in line
    ]


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_imap_over_tls_with_a_private_ca(
    security: str, mailbox: Mailbox, tmp_path: Path  # noqa: F811
) -> None:
    config = email_config(
        tmp_path, mailbox, free_port(), **tls_imap(mailbox, security, mailbox.server.cert)
    )
    async with running_kefu(config, env_for(mailbox)) as kefu:
        await wait_connected(kefu)
        await mailbox.append(mail(1))
        found = await wait_for(kefu, lambda r: any(x.direction == "in" for x in r))
        # Seen as read only after the log committed it: the channel really worked on that session.
        flags = await mailbox.flags()
    [row] = [x for x in found if x.direction == "in"]
    assert row.external_id == "tls-1@example.com"
    assert "sent to the TLS test number 1" in row.text
    assert "\\Seen" in flags[1]
    # Dovecot says so when a login happened over TLS ("TLS" for imaps and after STARTTLS alike):
    # the reader did not quietly fall back to plaintext.
    deadline = time.monotonic() + 5
    while not tls_logins(mailbox.server, mailbox.username):
        assert time.monotonic() < deadline, dovecot_log(mailbox.server)[-3000:]
        await asyncio.sleep(0.05)


async def test_plain_imap_login_is_not_tls(mailbox: Mailbox, tmp_path: Path) -> None:  # noqa: F811
    """The check above can fail: a plaintext session leaves no TLS login line."""
    config = email_config(tmp_path, mailbox, free_port())
    async with running_kefu(config, env_for(mailbox)) as kefu:
        await wait_connected(kefu)
        await asyncio.sleep(0.2)
    lines = [
        line for line in dovecot_log(mailbox.server).splitlines()
        if "Login:" in line and f"user=<{mailbox.username}>" in line
    ]
    assert lines and not any(", TLS, " in line for line in lines), lines


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_imap_with_an_untrusted_certificate_fails_cleanly_and_retries(
    security: str,
    mailbox: Mailbox,  # noqa: F811
    wrong_ca: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kefu")
    await mailbox.append(mail(2))
    config = email_config(tmp_path, mailbox, free_port(), **tls_imap(mailbox, security, wrong_ca))
    async with running_kefu(config, env_for(mailbox)) as kefu:
        # Backoff 0.2, 0.4, 0.8 s...: three failed attempts well within the wait.
        deadline = time.monotonic() + 8
        while len(reconnects(caplog)) < 3:
            assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
            await asyncio.sleep(0.05)
        channel = kefu.channels["email"]
        task = channel._task  # type: ignore[attr-defined]
        assert task is not None and not task.done()  # still retrying, not crashed
        assert not channel.reader.connected.is_set()  # type: ignore[attr-defined]
        assert await rows(kefu) == []
    warnings = reconnects(caplog)
    for message in warnings:
        assert "CERTIFICATE_VERIFY_FAILED" in message, message
        assert "certificate verify failed" in message, message
    assert not any(
        r.levelno >= logging.ERROR for r in caplog.records if r.name.startswith("kefu.email")
    )
    assert not any("email.imap.connected" in r.getMessage() for r in caplog.records)
    # Nothing was acknowledged: the mail is still unread in Dovecot for when the CA is fixed.
    flags = await mailbox.flags()
    assert "\\Seen" not in flags[1]


def reconnects(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "email.imap.reconnect" in r.getMessage()]


async def answer_over(
    server: SmtpServer, security: str, box: Mailbox, tmp_path: Path, ca: Path
) -> Kefu:
    config = email_config(
        tmp_path, box, server.port, smtp_security=security, ca_file=str(ca)
    )
    async with running_kefu(config, env_for(box)) as kefu:
        conversation = await customer_writes(kefu, box)
        out = await kefu_cli(tmp_path, config, "reply", str(conversation), "Sent to you over TLS.")
        assert "queued for email" in out
        await delivered(server, 1)
        sent = await outbox_row(kefu, "sent")
    [received] = server.handler.delivered
    assert received.recipients == ["zhangsan@example.com"] and received.sender == ADDRESS
    assert received.message["Message-ID"] == f"<{sent.external_id}>"
    body = received.message.get_body(("plain",))
    assert body is not None and "Sent to you over TLS." in body.get_content()
    assert server.handler.logins == [(box.username, box.password)]
    return kefu


async def test_smtp_starttls_with_a_private_ca(
    smtp_starttls: SmtpServer, mailbox: Mailbox, tmp_path: Path  # noqa: F811
) -> None:
    await answer_over(smtp_starttls, "starttls", mailbox, tmp_path, mailbox.server.cert)


async def test_smtp_implicit_tls_with_a_private_ca(
    smtps: SmtpServer, mailbox: Mailbox, tmp_path: Path  # noqa: F811
) -> None:
    await answer_over(smtps, "tls", mailbox, tmp_path, mailbox.server.cert)


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_smtp_with_an_untrusted_certificate_is_not_sent(
    security: str, mailbox: Mailbox, wrong_ca: Path, tmp_path: Path, dovecot: DovecotServer  # noqa: F811
) -> None:
    server = SmtpServer(tls=security, cert=dovecot.cert, key=dovecot.key)  # type: ignore[arg-type]
    server.start()
    try:
        # IMAP stays plain here; only the SMTP side distrusts the server.
        config = email_config(
            tmp_path, mailbox, server.port, smtp_security=security, ca_file=str(wrong_ca)
        )
        # Retried, not given up, until the row is looked at (reads do not wait behind the worker).
        config["outbox"]["max_attempts"] = 1000
        async with running_kefu(config, env_for(mailbox)) as kefu:
            conversation = await customer_writes(kefu, mailbox)
            await kefu_cli(tmp_path, config, "reply", str(conversation), "Never leaves.")
            row = await outbox_row(kefu, "failed")
    finally:
        server.stop()
    assert row.last_error is not None and "certificate verify failed" in row.last_error.lower(), (
        row.last_error
    )
    assert server.handler.delivered == [] and server.handler.logins == []
