"""Shared pieces of the email tests: a real Dovecot, a real aiosmtpd, kefu configured for both.

Imported by the test modules (not a conftest: other channels' tests live in this folder too).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aioimaplib import IMAP4
from sqlalchemy import select

from bot.app import Kefu
from storage.models import Interaction
from tests.servers.dovecot import DovecotServer
from tests.servers.kefu import base_config
from tests.servers.smtp import SmtpServer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "email"
ADDRESS = "support@kefu.test"


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / f"{name}.eml").read_bytes()


def fixture_names() -> list[str]:
    return sorted(p.stem for p in FIXTURES.glob("*.eml"))


@dataclass
class Mailbox:
    server: DovecotServer
    username: str
    password: str

    async def client(self) -> IMAP4:
        # Right after a Dovecot restart on a loaded machine an APPEND can wait well over 10 s for
        # the new server's index; the test's own mail must arrive, however slowly.
        client = IMAP4("127.0.0.1", self.server.port, timeout=60)
        await client.wait_hello_from_server()
        response = await client.login(self.username, self.password)
        assert response.result == "OK", response
        return client

    async def append(
        self,
        *messages: bytes,
        folder: str = "INBOX",
        flags: str | None = None,
        date: datetime | None = None,
    ) -> None:
        """IMAP APPEND; flags and the internal date let a test build a mailbox with history."""
        client = await self.client()
        try:
            for raw in messages:
                response = await client.append(raw, mailbox=folder, flags=flags, date=date)
                assert response.result == "OK", response
        finally:
            await client.logout()

    async def flags(self, folder: str = "INBOX") -> dict[int, str]:
        """uid -> the FLAGS list as text."""
        client = await self.client()
        try:
            response = await client.select(folder)
            assert response.result == "OK", response
            fetched = await client.uid("fetch", "1:*", "(UID FLAGS)")
            found: dict[int, str] = {}
            for line in fetched.lines:
                text = bytes(line).decode()
                if " FETCH (" in text:
                    uid = int(text.split("UID ")[1].split()[0].rstrip(")"))
                    found[uid] = text.split("FLAGS (")[1].split(")")[0]
            return found
        finally:
            await client.logout()


@pytest.fixture(scope="session")
def dovecot() -> Iterator[DovecotServer]:
    server = DovecotServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mailbox(dovecot: DovecotServer) -> Mailbox:
    username, password = dovecot.new_user()
    return Mailbox(dovecot, username, password)


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def email_config(
    tmp_path: Path, mailbox: Mailbox, smtp_port: int, *, db_url: str | None = None, **email: Any
) -> dict[str, Any]:
    """kefu reading `mailbox`; on SQLite in tmp_path unless a `db_url` (the fixture that runs a
    test on SQLite and on PostgreSQL) is given."""
    section: dict[str, Any] = {
        "enabled": True,
        "address": ADDRESS,
        "username": mailbox.username,
        "imap_host": "127.0.0.1",
        "imap_port": mailbox.server.port,
        "imap_security": "none",
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp_port,
        "smtp_security": "none",
        "store_dir": str(tmp_path / "mail"),
        "poll_interval_seconds": 0.2,
        "idle_recheck_seconds": 30,
        "timeout_seconds": 5,
    }
    section.update(email)
    # The fixtures' mail is often a complaint; these tests count SMTP traffic of agents' answers,
    # so the automatic acknowledgement (tested in tests/test_complaint_flow.py) stays off here.
    return base_config(
        db_url or f"sqlite+aiosqlite:///{tmp_path}/kefu.db",
        email=section,
        routing={"acknowledge_complaints": False},
    )


def env_for(mailbox: Mailbox) -> dict[str, str]:
    return {"KEFU_EMAIL_PASSWORD": mailbox.password}


async def rows(kefu: Kefu, channel: str = "email") -> list[Interaction]:
    async with kefu.db.sessions() as session:
        return list(
            await session.scalars(
                select(Interaction).where(Interaction.channel == channel).order_by(Interaction.id)
            )
        )


async def wait_for(
    kefu: Kefu,
    predicate: Callable[[list[Interaction]], bool],
    timeout: float = 10.0,
) -> list[Interaction]:
    deadline = time.monotonic() + timeout
    while True:
        found = await rows(kefu)
        if predicate(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(
                f"log did not reach the expected state in {timeout} s: "
                f"{[(r.direction, r.external_id, r.text[:60]) for r in found]}"
            )
        await asyncio.sleep(0.05)


async def wait_connected(kefu: Kefu, timeout: float = 10.0) -> None:
    channel = kefu.channels["email"]
    await asyncio.wait_for(channel.reader.connected.wait(), timeout)  # type: ignore[attr-defined]


# What each fixture must come out as. "has": substrings of the logged text; "lacks": quoted history
# and signatures that must be gone; "files": attachment names.
EXPECT: dict[str, dict[str, Any]] = {
    "plain__gbk_base64": {
        "address": "lilei@example.cn",
        "name": "李雷",
        "subject": "订单还没有发货",
        "language": "zh",
        "has": ["我上周下的订单（编号 20240311-889）到现在还没有发货"],
    },
    "plain__gb2312_label_gbk_chars": {
        "address": "wangzhe@163.example",
        "name": "王喆",
        "subject": "修改收件地址（朱镕）",
        "has": ["我叫王喆，收件人写的是朱镕"],
    },
    "plain__big5_qp": {
        "address": "meiling.chen@example.tw",
        "name": "陳美玲",
        "subject": "商品瑕疵換貨",
        "has": ["外盒破損，請問可以換貨嗎？"],
    },
    "plain__utf8_qp": {
        "address": "zoe.martin@example.fr",
        "name": "Zoë Martin",
        "subject": "Double charge – order 5521",
        "language": "en",
        "has": ["charged twice for order 5521 on my credit card statement this month. Could you"],
    },
    "plain__unlabelled_8bit_gbk": {
        "address": "zhangsan@example.cn",
        "has": ["我的快递显示已签收，但是我没有收到包裹"],
    },
    "plain__latin1_label_utf8": {
        "address": "frederic@example.fr",
        "has": ["la livraison prévue hier n'est pas arrivée. Où est mon colis"],
    },
    "html_only__qqmail": {
        "address": "12345678@qq.example",
        "name": "韩梅梅",
        "hint": 7,
        "has": ["退款还没有到账，已经等了一周了。\n请给个准确时间。"],
        "lacks": ["原始邮件", "发件人", "3-5个工作日", "Best regards", "<div"],
    },
    "attachment__rfc2231_filename": {
        "address": "hans.wu@example.de",
        "subject": "发票请查收",
        "has": ["附件是发票申请表"],
        "files": ["发票申请表.pdf"],
    },
    "attachment__rfc2047_filename": {
        "address": "zhao@example.cn",
        "subject": "包裹破损",
        "has": ["里面的杯子碎了"],
        "files": ["破损照片.png"],
    },
    "reply__gmail": {
        "address": "tom.baker@gmail.example",
        "hint": 3,
        "reply_to": ["kefu.0a1b2c3d@kefu.test"],
        "has": ["the tracking number you sent does not work"],
        "lacks": ["wrote:", "SF1234567890", "> "],
    },
    "reply__gmail_zh": {
        "address": "liuyang@gmail.example",
        "hint": 4,
        "has": ["好的，我明天在家，可以安排上门取件。"],
        "lacks": ["写道", "什么时候方便"],
    },
    "reply__outlook": {
        "address": "anna.schmidt@outlook.example",
        "hint": 5,
        "has": ["I still have not received the replacement. Please escalate this."],
        "lacks": ["Get Outlook", "________", "From:", "We have sent"],
    },
    "reply__outlook_zh": {
        "address": "zhoujie@example.cn",
        "hint": 6,
        "has": ["发票抬头写错了"],
        "lacks": ["原始邮件", "发件人", "请查收"],
    },
    "reply__apple_mail": {
        "address": "maria.rossi@icloud.example",
        "hint": 8,
        "has": ["Yes, please cancel the order."],
        "lacks": ["Sent from my iPhone", "wrote:", "7788?"],
    },
    "reply__thunderbird": {
        "address": "peter.novak@example.cz",
        "hint": 9,
        "has": ["exchange it for L."],
        "lacks": ["Peter Novak", "+420", "wrote:", "How can we help"],
    },
    "reply__foxmail": {
        "address": "sunli@foxmail.example",
        "hint": 10,
        "has": ["好的，收到，谢谢！"],
        "lacks": ["Original", "已为您安排换货"],
    },
    "auto_reply__out_of_office": {
        "address": "kim.lee@example.kr",
        "kind": "event",
        "meta_kind": "auto_reply",
        "has": ["out of the office"],
    },
    "noise__precedence_list": {
        "address": "news@shop.example",
        "kind": "event",
        "meta_kind": "auto_reply",
        "has": ["Big sale"],
    },
    "bounce__dsn": {
        "address": "mailer-daemon@mx.kefu.test",
        "kind": "event",
        "meta_kind": "bounce",
        "failed": ["gone.customer@example.org"],
        "has": ["gone.customer@example.org", "5.1.1"],
    },
    # One fixture per cause found on real mail (Zammad's corpus; issue 10): 7-bit charsets, short
    # Latin-1 and GB2312 text, stray 8-bit bytes, part selection and lenient recovery.
    "charset__iso2022jp_7bit": {
        "address": "yamada@example.jp",
        "name": "山田太郎",
        "subject": "注文について",
        "has": ["注文した商品がまだ届きません。至急確認してください。"],
    },
    "charset__utf7": {
        "address": "hans@example.de",
        "subject": "Lieferung überfällig",
        "has": ["Meine Lieferung ist überfällig, bitte prüfen Sie das."],
    },
    "charset__hz": {
        "address": "chen@example.cn",
        "subject": "退款问题",
        "has": ["我要求退款，商品质量有问题。"],
    },
    "charset__latin1_short_subject": {
        "address": "martin@example.com",
        "subject": "aaäöüßad",
        "has": ["Grüße aus Köln"],
    },
    "charset__unlabelled_short_gb2312": {
        "address": "wang@example.com",
        "subject": "发票",
        "has": ["关于订单的问题"],
    },
    "charset__ascii_label_stray_8bit": {
        "address": "jose@example.com",
        "has": ["I paid 20€ twice, Señor."],
    },
    "parts__empty_plain_with_html": {
        "address": "lin@example.cn",
        "has": ["我的订单 7788 还没有发货。"],
    },
    "parts__mixed_plain_and_html": {
        "address": "ana@example.com",
        "has": [
            "First, the box was open.\n\nSecond, the cup inside was broken.\n\nThird, please send a new one."
        ],
    },
    "lenient__apple_no_boundary": {
        "address": "maria@icloud.example",
        "has": ["The parcel arrived empty."],
        "lacks": ["<html", "Apple-Mail"],
        "defects": ["NoBoundaryInMultipartDefect", "boundary_found_in_body"],
    },
    "lenient__boundary_mismatch": {
        "address": "broken@example.net",
        "has": ["This part never matches the declared boundary."],
        "lacks": ["--zzz"],
        "defects": ["StartBoundaryNotFoundDefect", "boundary_found_in_body"],
    },
    "lenient__unindented_folding": {
        "address": "olga@example.org",
        "subject": "wrong size",
        "has": ["The shoes are a size too small."],
        "defects": ["unindented_folding"],
    },
    "lenient__two_from_empty_first": {
        "address": "lina@example.cn",
        "name": "Li Na",
        "has": ["请帮我换一个颜色。"],
        "defects": ["sender_from_second_address"],
    },
    "lenient__reply_to_only": {
        "address": "zhou@example.cn",
        "has": ["发票抬头需要修改。"],
        "defects": ["sender_from_reply_to"],
    },
    "lenient__no_sender": {
        "address": "unknown@kefu.invalid",
        "has": ["There is no From header in this message."],
        "defects": ["no_sender"],
    },
    "attachment__nul_in_filename": {
        "address": "kim@example.com",
        "has": ["Photo of the damage attached."],
        "files": ["damage.png"],
        "defects": ["unsafe_filename"],
    },
    "malformed__no_sender_no_text": {
        "address": "unknown@kefu.invalid",
        "kind": "event",
        "meta_kind": "malformed",
        "has": ["malformed email", "no sender address"],
    },
}
