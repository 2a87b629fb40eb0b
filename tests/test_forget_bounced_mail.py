"""Forgetting a customer whose mail bounced: the bounce (a delivery status notification from the
mail system, logged under its own sender) names the customer's address and returns kefu's mail
to them. After `kefu customers forget`, the address and their words are nowhere: not in the
database files, not in the bounce's raw mail under store_dir. Real Dovecot, real kefu."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.messages import Inbound
from storage.db import Database
from tests.channels.email_fixtures import (
    Mailbox,
    dovecot,  # noqa: F401 - fixture
    email_config,
    env_for,
    fixture_bytes,
    wait_connected,
    wait_for,
)
from tests.channels.email_fixtures import mailbox as mailbox  # fixture
from tests.channels.test_email_ingest import kefu_wrote
from tests.servers.kefu import running_kefu
from tests.servers.ports import free_port
from tests.test_forget import cli, found_anywhere

ADDRESS = "gone.customer@example.org"
NEEDLES = (ADDRESS, "Gone.Customer@example.org", "Zorblina Quux", "zorblax")


async def test_forget_erases_the_bounce_that_names_the_customer(
    db: Database, db_url: str, mailbox: Mailbox, tmp_path: Path
) -> None:
    config = email_config(tmp_path, mailbox, free_port(), db_url=db_url)
    store_dir = Path(config["email"]["store_dir"])
    async with running_kefu(config, env_for(mailbox)) as kefu:
        await wait_connected(kefu)
        receipt = await kefu.receive(
            Inbound(
                "email", "q-1@example.org", ADDRESS, "zorblax: where is my order?",
                display_name="Zorblina Quux",
            )
        )
        await kefu_wrote(kefu, ADDRESS, "kefu.0bad0bad@kefu.test")
        await mailbox.append(fixture_bytes("bounce__dsn"))
        await wait_for(kefu, lambda r: any(x.meta.get("kind") == "bounced" for x in r))
    assert await found_anywhere(db, db_url, store_dir, NEEDLES) == set(NEEDLES)

    code, out = await asyncio.to_thread(
        cli, tmp_path, db_url, store_dir, "customers", "forget", str(receipt.customer_id), "--yes"
    )
    assert code == 0, out
    assert await found_anywhere(db, db_url, store_dir, NEEDLES) == set()
