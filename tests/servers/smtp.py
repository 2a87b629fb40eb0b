"""A real SMTP server for the tests (aiosmtpd), answering from a script: '451 …' then '250 OK'."""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.servers.ports import free_port


@dataclass
class Received:
    sender: str
    recipients: list[str]
    content: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = BytesParser(policy=policy.default).parsebytes(self.content)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Recorder:
    """aiosmtpd handler: DATA answers come from `data_replies` in order, then 250."""

    data_replies: list[str] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    delivered: list[Received] = field(default_factory=list)
    attempts: int = 0
    logins: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        reply = self.rcpt_replies.get(address.lower())
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.attempts += 1
            reply = self.data_replies.pop(0) if self.data_replies else "250 OK"
            if reply.startswith("250"):
                self.delivered.append(
                    Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content))
                )
        return reply


class NoAuthRecorder(Recorder):
    """A relay that offers no AUTH at all (a local Postfix on port 25): EHLO without the line."""

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return [r for r in responses if not r[4:].upper().startswith("AUTH")]


class SmtpServer:
    """AUTH PLAIN/LOGIN (a submission port behind localhost); by default any login succeeds and is
    recorded, so tests can check what kefu sent; auth="refuse" answers every login 535 and
    auth="none" offers no AUTH at all. Without TLS by default; tls="starttls" offers STARTTLS and
    tls="tls" speaks TLS from the first byte (port 465 style), both with the given cert and key."""

    def __init__(
        self,
        *,
        tls: Literal["starttls", "tls"] | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        auth: Literal["any", "refuse", "none"] = "any",
    ) -> None:
        self.auth = auth
        self.handler = NoAuthRecorder() if auth == "none" else Recorder()
        self.tls = tls
        self.context: ssl.SSLContext | None = None
        if tls is not None:
            if cert is None or key is None:
                raise ValueError("a TLS SmtpServer needs cert and key")
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(cert, key)
        self.port = free_port()  # aiosmtpd's port=0 fails its own readiness check
        self.controller = self._controller()

    def _controller(self) -> Controller:
        return Controller(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            auth_require_tls=False,
            authenticator=self._authenticate,
            tls_context=self.context if self.tls == "starttls" else None,
            ssl_context=self.context if self.tls == "tls" else None,
        )

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            self.handler.logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=self.auth == "any", handled=False)

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()
