"""Mail holding NUL characters (#16): PostgreSQL's text cannot store U+0000, which SQLite takes.

A mail's body, subject, display name or Message-ID with a NUL (a raw 0x00 byte, a =00 in an
encoded word, a UTF-16 part) failed the whole batch on PostgreSQL ('invalid byte sequence for
encoding "UTF8": 0x00'), and so every retry of it: mail is already received and cannot be refused,
so each NUL arrives as U+FFFD, on both databases alike.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from bot.plugins import pipeline as plugged_pipeline
from channels.email import MailStore, to_inbound
from storage.db import Database
from storage.models import Customer, Interaction

RAW = (
    b"From: =?utf-8?q?Mei=00Xue?= <mei@example.com>\r\n"
    b"To: care@shop.example\r\n"
    b"Subject: =?utf-8?q?order=00 12?=\r\n"
    b"Message-ID: <a1\x00@example.com>\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    b"hello\x00world \xf0\x9f\x8c\xb8 \xe4\xbd\xa0\xe5\xa5\xbd\r\n"
)


async def test_a_mail_with_nul_characters_is_logged_with_replacement_characters(
    db: Database, tmp_path: Path
) -> None:
    store = MailStore(tmp_path / "mail", 10_000_000)
    inbound = to_inbound(RAW, store, own_address="care@shop.example")
    pipeline = plugged_pipeline(db)
    try:
        [receipt] = await pipeline.receive_many([inbound])
        [again] = await pipeline.receive_many([to_inbound(RAW, store, own_address=None)])
    finally:
        await pipeline.close()
    assert receipt.status == "accepted" and again.status == "duplicate"
    async with db.sessions() as session:
        [line] = await session.scalars(select(Interaction))
        customer = await session.get(Customer, line.customer_id)
    assert customer is not None
    assert line.text.startswith("hello\ufffdworld 🌸 你好")
    assert customer.display_name == "Mei\ufffdXue"
    assert "\x00" not in (line.external_id or "")
