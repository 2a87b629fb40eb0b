"""A storage failure while a message is being logged reaches the log as an error kind and a first
line, never with the statement's parameters: those are the customer's words and name."""

from __future__ import annotations

import logging
import traceback

import httpx
import pytest
from sqlalchemy import text

from storage.db import Database
from tests.servers.kefu import base_config, post_signed, running_kefu, url

SECRET = "privacy-secret"
WORD, NAME, USER = "zanzibarquux", "Quillonia", "u-7731904"

SQLITE_TRIGGER = f"""
CREATE TRIGGER refuse_word BEFORE INSERT ON interactions WHEN NEW.text LIKE '%{WORD}%'
BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END
"""
POSTGRES_TRIGGER = (
    f"""CREATE FUNCTION refuse_word() RETURNS trigger AS $$ BEGIN
        IF NEW.text LIKE '%{WORD}%' THEN RAISE EXCEPTION 'refused by the test trigger'; END IF;
        RETURN NEW; END $$ LANGUAGE plpgsql""",
    "CREATE TRIGGER refuse_word BEFORE INSERT ON interactions FOR EACH ROW EXECUTE FUNCTION refuse_word()",
)


def rendered(record: logging.LogRecord) -> str:
    found = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
        found += "".join(traceback.format_exception(record.exc_info[1]))
    return found


async def test_a_storage_failure_logs_no_message_text(
    db: Database, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with db.engine.begin() as conn:
        for statement in (SQLITE_TRIGGER,) if db.is_sqlite else POSTGRES_TRIGGER:
            await conn.execute(text(statement))
    config = base_config(db_url, webhook={"sources": {"shop": {"secret_env": "SHOP_SECRET"}}})
    caplog.set_level(logging.DEBUG)
    async with (
        running_kefu(config, {"SHOP_SECRET": SECRET}) as kefu,
        httpx.AsyncClient(timeout=30) as client,
    ):
        answer = await post_signed(client, url(kefu, "/webhooks/shop"), SECRET, {
            "id": "m-1", "user": {"id": USER, "name": NAME, "email": "quillonia@example.net"},
            "text": f"my {WORD} order never came",
        })
        assert answer.status_code not in (
            200,
            202,
        )  # not logged: refused (422) or unavailable (503)
        assert WORD not in answer.text and NAME not in answer.text
    failures = [r for r in caplog.records if "refused by the test trigger" in rendered(r)]
    assert failures, "the failure was not logged at all"
    leaked = [
        rendered(r)
        for r in caplog.records
        if any(s in rendered(r) for s in (WORD, NAME, "quillonia@"))
    ]
    assert leaked == []


async def test_a_storage_failure_in_a_background_job_logs_no_customer_data(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """The SLA escalation's staff post names the customer; the database refuses it."""
    from datetime import UTC, datetime, timedelta

    from bot.care import _guarded
    from handlers import sla
    from handlers.routing import Router
    from tests.handlers.care_helpers import STAFF_ROOM, care_pipeline, config, message

    cfg = config()
    pipeline, _ = care_pipeline(db, cfg)
    t0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
    await pipeline.receive(
        message(
            1, f"The parcel {WORD} arrived broken, this is unacceptable!", t0, display_name=NAME
        )
    )
    await pipeline.close()
    # Staff posts are new rows or appended to one still waiting: refuse both.
    refuse = (
        tuple(
            f"""CREATE TRIGGER refuse_name_{when} BEFORE {when} ON outbox WHEN NEW.payload LIKE '%{NAME}%'
            BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END"""
            for when in ("INSERT", "UPDATE")
        )
        if db.is_sqlite
        else (
            f"""CREATE FUNCTION refuse_name() RETURNS trigger AS $$ BEGIN
            IF NEW.payload::text LIKE '%{NAME}%' THEN RAISE EXCEPTION 'refused by the test trigger'; END IF;
            RETURN NEW; END $$ LANGUAGE plpgsql""",
            "CREATE TRIGGER refuse_name BEFORE INSERT OR UPDATE ON outbox FOR EACH ROW EXECUTE FUNCTION refuse_name()",
        )
    )
    async with db.engine.begin() as conn:
        for statement in refuse:
            await conn.execute(text(statement))
    caplog.set_level(logging.DEBUG)
    job = _guarded(
        "sla.check",
        lambda: sla.check(db, t0 + timedelta(days=9), Router(cfg), staff_room=STAFF_ROOM),
    )
    assert await job() is None  # failed, logged, the next run tries again
    assert [r for r in caplog.records if "refused by the test trigger" in rendered(r)]
    leaked = [rendered(r) for r in caplog.records if any(s in rendered(r) for s in (WORD, NAME))]
    assert leaked == []
