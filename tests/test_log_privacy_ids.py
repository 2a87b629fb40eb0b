"""A message the database refuses is logged without the ids that name its sender (#12): a
Telegram message's key is "<chat id>:<message id>", and a private chat's id is the customer's
Telegram id; a Message-ID can carry the sender's address or phone. The failure line still says
which channel and what went wrong. Real pipeline, real databases refusing through a trigger."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from bot.messages import Inbound
from bot.plugins import pipeline as plugged_pipeline
from bot.text import redact_key
from storage.db import Database
from tests.test_log_privacy import SQLITE_TRIGGER, WORD, rendered

# A refusal of this one message (a check violation: the message's fault, not an outage).
POSTGRES_TRIGGER = (
    f"""CREATE FUNCTION refuse_word() RETURNS trigger AS $$ BEGIN
        IF NEW.text LIKE '%{WORD}%' THEN
            RAISE EXCEPTION 'refused by the test trigger' USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW; END $$ LANGUAGE plpgsql""",
    "CREATE TRIGGER refuse_word BEFORE INSERT ON interactions FOR EACH ROW "
    "EXECUTE FUNCTION refuse_word()",
)

TG = "6172839405"
MSGID = "<lin.meixiu-13912345678@example.org>"


@pytest.mark.parametrize(
    ("channel", "external_id", "address", "secrets"),
    [
        ("telegram", f"{TG}:41", TG, (TG,)),
        ("email", MSGID, "lin.meixiu@example.org", ("lin.meixiu", "13912345678")),
    ],
    ids=["telegram", "email"],
)
async def test_a_refused_message_is_logged_without_its_senders_ids(
    db: Database,
    caplog: pytest.LogCaptureFixture,
    channel: str,
    external_id: str,
    address: str,
    secrets: tuple[str, ...],
) -> None:
    async with db.engine.begin() as conn:
        for statement in (SQLITE_TRIGGER,) if db.is_sqlite else POSTGRES_TRIGGER:
            await conn.execute(text(statement))
    caplog.set_level(logging.DEBUG)
    pipeline = plugged_pipeline(db)
    with pytest.raises(Exception):  # noqa: B017 - refused or unavailable, either way not stored
        await pipeline.receive(
            Inbound(channel, external_id, address, f"my {WORD} parcel",
                    received_at=datetime.now(UTC))
        )
    await pipeline.close()
    lines = [rendered(r) for r in caplog.records]
    failures = [line for line in lines if "pipeline.receive.failure" in line]
    assert failures and all(f"channel={channel}" in line for line in failures), lines
    # The operator can still match the line to a message they hold: by its digest.
    assert all(redact_key(external_id) in line for line in failures), failures
    assert [line for line in lines if any(s in line for s in secrets)] == []


def test_redact_key_is_stable_and_hides_the_id() -> None:
    assert redact_key(f"{TG}:41") == redact_key(f"{TG}:41") != redact_key(f"{TG}:42")
    assert TG not in redact_key(f"{TG}:41") and len(redact_key(MSGID)) < 24
