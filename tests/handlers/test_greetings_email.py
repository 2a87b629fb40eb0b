"""A birthday greeting end to end through the email channel: a real kefu (scheduler, outbox, email
channel) with an injected clock, a real Dovecot for the mailbox it reads and a real aiosmtpd that
receives what it sends (issue #6: greetings delivered through each channel's test server)."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, date, datetime
from pathlib import Path

from sqlalchemy import select

from storage.models import CampaignDelivery, Interaction, OutboxRow
from tests.channels.email_fixtures import (
    ADDRESS,
    Mailbox,
    dovecot,  # noqa: F401 - pytest fixture
    email_config,
    env_for,
    mailbox,  # noqa: F401 - pytest fixture
    smtp,  # noqa: F401 - pytest fixture
)
from tests.handlers.test_greetings_delivery import kefu_at, seed
from tests.servers.smtp import SmtpServer

BIRTHDAY = date(1990, 3, 14)
CUSTOMER = "zhangsan@example.cn"
NO_CONSENT = "lisi@example.cn"
ENGLISH = "chen.alice@example.com"  # writes in English, her name in Chinese characters
# 09:00 in Shanghai on 14 March 2027 is 01:00 UTC; the planner wakes every 15 minutes and plans
# what is due within plan_interval + 5 minutes.
BEFORE = datetime(2027, 3, 14, 0, 30, tzinfo=UTC)  # 08:30 local: too early to plan
PLANNER_RUN = datetime(2027, 3, 14, 0, 45, tzinfo=UTC)  # 08:45 local: planned, held
NINE = datetime(2027, 3, 14, 1, 0, tzinfo=UTC)  # 09:00 local: sent


async def delivered(server: SmtpServer, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while len(server.handler.delivered) < count:
        assert time.monotonic() < deadline, f"{len(server.handler.delivered)} of {count} delivered"
        await asyncio.sleep(0.05)


async def test_birthday_greeting_delivered_once_by_email(
    tmp_path: Path, mailbox: Mailbox, smtp: SmtpServer  # noqa: F811 - pytest fixtures
) -> None:
    config = email_config(tmp_path, mailbox, smtp.port)
    config["campaigns"] = {"birthday": {"enabled": True}}
    db_url = config["storage"]["url"]
    greeted, refused = await seed(
        db_url,
        [
            {
                "display_name": "张三",
                "birthday": BIRTHDAY,
                "birthday_md": "03-14",
                "timezone": "Asia/Shanghai",
                "language": "zh",
                "identities": [("email", CUSTOMER)],
            },
            {
                "display_name": "李四",
                "birthday": BIRTHDAY,
                "birthday_md": "03-14",
                "timezone": "Asia/Shanghai",
                "language": "zh",
                "consent": False,
                "identities": [("email", NO_CONSENT)],
            },
        ],
    )
    now = [BEFORE]
    async with kefu_at(config, lambda: now[0], env_for(mailbox)) as kefu:
        assert "email" in kefu.channels
        # the start-up catch-up ran at 08:30 local: too early, nothing planned yet
        assert (await kefu.scheduler.run_once()).planned == 0
        now[0] = PLANNER_RUN
        assert (await kefu.scheduler.run_once()).planned == 1
        assert await kefu.worker.run_once() == 0  # held by the outbox until 09:00 local
        assert smtp.handler.delivered == []
        now[0] = NINE
        kefu.worker.wake()
        await delivered(smtp, 1)
        # the planner running again that day plans nothing more, the outbox has nothing to send
        assert (await kefu.scheduler.run_once()).planned == 0
        assert await kefu.worker.run_once() == 0
        async with kefu.db.sessions() as session:
            row = await session.scalar(select(OutboxRow).where(OutboxRow.channel == "email"))
            deliveries = list(await session.scalars(select(CampaignDelivery)))
            logged = list(
                await session.scalars(select(Interaction).where(Interaction.direction == "out"))
            )
    # and so does a restart later the same day
    async with kefu_at(config, lambda: now[0], env_for(mailbox)) as kefu:
        assert (await kefu.scheduler.run_once()).planned == 0
        # run_once() claims every due row: nothing due is the proof, not a pause; leaving the
        # block stops the background worker, so whatever it might have sent has been sent.
        assert await kefu.worker.run_once() == 0

    [got] = smtp.handler.delivered
    assert got.sender == ADDRESS and got.recipients == [CUSTOMER]
    mail = got.message
    assert mail["To"] == CUSTOMER
    body = mail.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "张三，生日快乐" in text and "37 岁" in text, text
    # a greeting has no conversation: its own first line is the subject, no "Re:", no "[#…]"
    assert mail["Subject"] == "张三，生日快乐！🎂"
    assert "[#" not in text  # no conversation to keep a token for
    assert mail["Content-Language"] == "zh-CN" and mail["Auto-Submitted"] == "auto-generated"
    html = mail.get_body(("html",))
    assert html is not None and '<html lang="zh">' in html.get_content()
    msgid = mail["Message-ID"]
    assert re.fullmatch(r"<kefu\.[0-9a-f]{32}@kefu\.test>", msgid), msgid  # on kefu's domain
    assert row is not None and row.status == "sent" and row.address == CUSTOMER
    assert row.external_id == msgid.strip("<>")
    # the delivery row stays "planned"; whether it went out is its outbox row's status
    assert [(d.customer_id, d.status, d.channel, d.outbox_id) for d in deliveries] == [
        (greeted, "planned", "email", row.id)]
    assert [(i.customer_id, i.channel) for i in logged] == [(greeted, "email")]
    assert refused not in {d.customer_id for d in deliveries}
    assert NO_CONSENT not in {r for m in smtp.handler.delivered for r in m.recipients}


async def test_english_customer_with_a_chinese_name_gets_an_english_email(
    tmp_path: Path, mailbox: Mailbox, smtp: SmtpServer  # noqa: F811 - pytest fixtures
) -> None:
    """The email's own wording follows the customer's language, not the script of their name."""
    config = email_config(tmp_path, mailbox, smtp.port)
    config["campaigns"] = {"birthday": {"enabled": True}}
    await seed(
        config["storage"]["url"],
        [
            {
                "display_name": "陈爱丽",
                "birthday": BIRTHDAY,
                "birthday_md": "03-14",
                "timezone": "America/Los_Angeles",
                "language": "en",
                "identities": [("email", ENGLISH)],
            },
        ],
    )
    # 09:00 in Los Angeles on 14 March 2027 (daylight saving time from that morning) is 16:00 UTC
    async with kefu_at(config, lambda: datetime(2027, 3, 14, 16, 0, tzinfo=UTC), env_for(mailbox)):
        await delivered(smtp, 1)
    [got] = smtp.handler.delivered
    assert got.recipients == [ENGLISH]
    mail = got.message
    assert mail["Subject"] == "Happy birthday, 陈爱丽! 🎂"
    text = mail.get_body(("plain",))
    html = mail.get_body(("html",))
    assert text is not None and html is not None
    assert "Congratulations on turning 37" in text.get_content()
    assert "如需补充" not in text.get_content() and '<html lang="en">' in html.get_content()
