"""One mail, two copies (#12): the same message reaches the mailbox twice with different transport
headers (sent to two of the shop's addresses, or relayed twice). The log keeps it once; the second
copy's raw bytes must not stay behind in the mail store, where no row points at them and
`kefu customers forget` could never find them. SQLite and PostgreSQL, real MIME, the CLI."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

from bot.plugins import pipeline as plugged_pipeline
from channels.email import MailStore, to_inbound
from storage.db import Database
from tests.test_forget import cli, found_in_files

WORD, ADDRESS = "quibbleworth", "tessaly.q@example.org"
T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)


def copy(delivered_to: str) -> bytes:
    message = EmailMessage()
    message["Received"] = f"from mx.example.org by mail.shop.example for <{delivered_to}>"
    message["Delivered-To"] = delivered_to
    message["From"] = f"Tessaly <{ADDRESS}>"
    message["To"] = "support@shop.example, sales@shop.example"
    message["Subject"] = "broken kettle"
    message["Message-ID"] = "<kettle-77@example.org>"
    message.set_content(f"My {WORD} kettle arrived broken.")
    message.add_attachment(b"photo of the kettle", maintype="image", subtype="jpeg",
                           filename="kettle.jpg")
    return message.as_bytes()


async def test_a_second_copy_of_a_mail_leaves_nothing_to_forget(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    store_dir = tmp_path / "mail"
    store = MailStore(store_dir, 1 << 20)
    pipeline = plugged_pipeline(db)
    first = await pipeline.receive(
        to_inbound(copy("support@shop.example"), store, own_address="support@shop.example",
                   now=T0)
    )
    second = await pipeline.receive(
        to_inbound(copy("sales@shop.example"), store, own_address="support@shop.example", now=T0)
    )
    await pipeline.close()
    assert (first.status, second.status) == ("accepted", "duplicate")
    assert first.customer_id is not None

    code, out = await asyncio.to_thread(
        cli, tmp_path, db_url, store_dir, "customers", "forget", str(first.customer_id), "--yes"
    )
    assert code == 0, out
    left = sorted(p for p in store_dir.rglob("*") if p.is_file())
    assert found_in_files(left, (WORD, ADDRESS)) == set(), [p.name for p in left]
