"""Forgetting a customer (or one conversation) leaves their words and identifiers nowhere: not in
the database files (SQLite's file and WAL, byte for byte; every text column on PostgreSQL), not
under the mail store. A bystander's data, searched the same way, is still found."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import Date, String, Text, cast, func, or_, select
from sqlalchemy.types import JSON
from typer.testing import CliRunner

from bot.cli import app
from bot.messages import Inbound
from bot.plugins import pipeline as plugged_pipeline
from channels.email import MailStore, to_inbound
from channels.telegram_updates import LinkRequest
from handlers import agents, lifecycle, sla, staff_group, survey, telegram_links
from handlers.acknowledge import Acknowledger
from handlers.roles import SYSTEM
from handlers.routing import Router
from handlers.staff_alerts import ComplaintAlerts
from storage import staff
from storage.db import Database
from storage.models import Base, Customer, Interaction, OutboxRow, Survey
from tests.handlers.care_helpers import STAFF_CHAT, STAFF_ROOM, config

TG = "5918273645"
NAME, NAME_ZH, EMAIL, PHONE = "Meixiu", "梅秀", "meixiu.q7@example.org", "13912345678"
BIRTHDAY = date(1990, 5, 17)
# What the customer wrote: the mail body, its attachment, a Telegram message, a survey comment.
WORDS = ("zorblax", "glimmerfax", "quixotrel", "flumberine")
NEEDLES = (NAME, NAME_ZH, EMAIL, PHONE, TG, "1990-05-17", *WORDS)
BYSTANDER = ("wombatique", "Bystander Bo")
T0 = datetime(2027, 3, 1, 2, 0, tzinfo=UTC)
CFG = config(survey={"ask_after": "0s"})


def mail(store: MailStore) -> Inbound:
    message = EmailMessage()
    message["From"] = f"{NAME} Q <{EMAIL}>"
    message["To"] = "support@example.com"
    message["Subject"] = "parcel"
    message["Message-ID"] = f"<{NAME.lower()}-{PHONE}@example.org>"
    # Long enough to spill onto SQLite overflow pages, which a delete frees without zeroing by
    # default.
    story = " ".join(f"Day {n}: still no zorblax." for n in range(400))
    message.set_content(
        f"My parcel zorblax arrived broken, this is unacceptable! Call me on +86 {PHONE}.\n{story}"
    )
    message.add_attachment(
        b"receipt glimmerfax 2027", maintype="text", subtype="plain", filename="glimmerfax.txt"
    )
    return to_inbound(message.as_bytes(), store, own_address="support@example.com", now=T0)


async def seed(db: Database, store: MailStore) -> dict[str, int]:
    async with db.transaction() as s:
        # An agent on Telegram: conversations assigned to her go to her private chat, and the group
        # gets a board line naming the customer.
        await staff.add(s, "amy", telegram_user_id=3003)
    router = Router(CFG)
    observers = [
        staff_group.mirror_observer(STAFF_ROOM),
        ComplaintAlerts(router, STAFF_ROOM),
        Acknowledger(CFG),
        survey.survey_observer,
    ]
    pipeline = plugged_pipeline(db, route=router, observers=observers)
    by_mail = await pipeline.receive(mail(store))
    by_telegram = await pipeline.receive(
        Inbound(
            "telegram",
            f"{TG}:12",
            TG,
            "quixotrel 包裹坏了，我要投诉",
            received_at=T0,
            display_name=NAME_ZH,
        )
    )
    bystander = await pipeline.receive(
        Inbound(
            "webhook",
            "shop:9",
            "shop:bo",
            "wombatique is late",
            received_at=T0,
            display_name=BYSTANDER[1],
        )
    )
    assert by_mail.customer_id != by_telegram.customer_id
    async with db.transaction() as s:
        telegram_customer = await s.get(Customer, by_telegram.customer_id)
        assert telegram_customer is not None
        telegram_customer.birthday = BIRTHDAY
    # The Telegram user shares their phone, then opens a link made for the email customer: the two
    # records merge (the Telegram one stays behind as a pointer) and the audit log names them.
    phone = LinkRequest("phone", TG, f"+86 {PHONE}", channel="telegram")
    assert (await telegram_links.handle(db, phone)).outcome == "recorded"
    async with db.transaction() as s:
        token = await telegram_links.create_link(s, by_mail.customer_id)
    start = LinkRequest("start", TG, token, channel="telegram")
    assert (await telegram_links.handle(db, start)).outcome == "merged"
    async with db.transaction() as s:
        await agents.answer(
            s, by_mail.conversation_id, f"Sorry {NAME}, a new one ships today", agent="amy"
        )
    await sla.check(db, T0 + timedelta(days=30), router, staff_room=STAFF_ROOM)
    async with db.transaction() as s:
        change = await lifecycle.resolve(
            s, by_telegram.conversation_id, SYSTEM, CFG, now=T0 + timedelta(hours=1)
        )
        assert change.survey_id is not None
        await survey.record_answer(
            s,
            survey_id=change.survey_id,
            score=2,
            comment="flumberine was rude",
            channel="telegram",
            now=T0 + timedelta(hours=2),
        )
    await pipeline.close()
    return {
        "customer": by_mail.customer_id,
        "mail_conversation": by_mail.conversation_id,
        "telegram_conversation": by_telegram.conversation_id,
        "bystander": bystander.customer_id,
    }


def forms(needle: str) -> list[bytes]:
    """The bytes a value can take on disk: UTF-8, and JSON's \\u escapes inside JSON columns."""
    return list({needle.encode(), json.dumps(needle)[1:-1].encode()})


def found_in_files(paths: list[Path], needles: tuple[str, ...]) -> set[str]:
    found = set()
    for path in paths:
        if path.is_file():
            data = path.read_bytes()
            found |= {n for n in needles if any(f in data for f in forms(n))}
    return found


async def found_in_columns(db: Database, needles: tuple[str, ...]) -> set[str]:
    """Every text, JSON and date column of every table, as text (PostgreSQL)."""
    found = set()
    async with db.sessions() as s:
        for table in Base.metadata.sorted_tables:
            for column in table.columns:
                if not isinstance(column.type, String | Text | JSON | Date):
                    continue
                as_text = cast(column, Text)
                for needle in needles:
                    hit = or_(
                        *[as_text.contains(f.decode(), autoescape=True) for f in forms(needle)]
                    )
                    if await s.scalar(select(func.count()).select_from(table).where(hit)):
                        found.add(needle)
    return found


async def found_anywhere(
    db: Database, db_url: str, store_dir: Path, needles: tuple[str, ...]
) -> set[str]:
    found = found_in_files(sorted(store_dir.rglob("*")), needles)
    if db.is_sqlite:
        path = Path(db.url.database or "")
        found |= found_in_files([path, Path(f"{path}-wal"), Path(f"{path}-journal")], needles)
    else:
        found |= await found_in_columns(db, needles)
    return found


def cli(tmp_path: Path, db_url: str, store_dir: Path, *args: str) -> tuple[int, str]:
    path = tmp_path / "config.toml"
    path.write_text(f'[storage]\nurl = "{db_url}"\n[email]\nstore_dir = "{store_dir}"\n')
    result = CliRunner().invoke(app, [*args, "--config", str(path)])
    return result.exit_code, result.stdout + result.stderr


async def test_forget_leaves_nothing_in_the_database_files_or_the_mail_store(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    store_dir = tmp_path / "mail"
    ids = await seed(db, MailStore(store_dir, 1 << 20))
    before = await found_anywhere(db, db_url, store_dir, (*NEEDLES, *BYSTANDER))
    assert before == {*NEEDLES, *BYSTANDER}  # the search finds what is there

    code, out = await asyncio.to_thread(
        cli, tmp_path, db_url, store_dir, "customers", "forget", str(ids["customer"]), "--yes"
    )
    assert code == 0, out
    assert await found_anywhere(db, db_url, store_dir, (*NEEDLES, *BYSTANDER)) == set(BYSTANDER)

    async with db.sessions() as s:
        # Rows stay, without content: counts and reports stay true.
        assert await s.scalar(select(func.count()).select_from(Interaction).where(
            Interaction.customer_id == ids["customer"])) >= 4
        answered = await s.scalar(
            select(Survey).where(Survey.conversation_id == ids["telegram_conversation"])
        )
        assert (
            answered is not None and answered.score == 2 and answered.customer_id == ids["customer"]
        )
        staff_rows = list(await s.scalars(select(OutboxRow).where(
            OutboxRow.address == str(STAFF_CHAT),
            OutboxRow.conversation_id.in_([ids["mail_conversation"], ids["telegram_conversation"]]),
        )))
        assert staff_rows and all(r.payload == {"erased": True} for r in staff_rows)
        merged_away = list(
            await s.scalars(select(Customer).where(Customer.merged_into == ids["customer"]))
        )
        assert merged_away and all(
            c.forgotten_at is not None and c.display_name is None for c in merged_away
        )

    # A channel delivering one of the forgotten messages again (an IMAP folder re-read, a webhook
    # retry) is still a duplicate: nothing comes back.
    pipeline = plugged_pipeline(db)
    again = await pipeline.receive(mail(MailStore(tmp_path / "again", 1 << 20)))
    await pipeline.close()
    assert again.status == "duplicate"


async def test_forget_one_conversation(db: Database, db_url: str, tmp_path: Path) -> None:
    store_dir = tmp_path / "mail"
    ids = await seed(db, MailStore(store_dir, 1 << 20))
    code, out = await asyncio.to_thread(
        cli,
        tmp_path,
        db_url,
        store_dir,
        "conversations",
        "forget",
        str(ids["mail_conversation"]),
        "--yes",
    )
    assert code == 0, out
    found = await found_anywhere(
        db, db_url, store_dir, ("zorblax", "glimmerfax", "quixotrel", *BYSTANDER)
    )
    # The mail conversation's words and files are gone; the Telegram conversation's stay.
    assert found == {"quixotrel", *BYSTANDER}
    async with db.sessions() as s:
        customer = await s.get(Customer, ids["customer"])
    assert customer is not None and customer.forgotten_at is None and customer.display_name


@pytest.mark.parametrize(
    "args", [("customers", "forget", "999", "--yes"), ("conversations", "forget", "999", "--yes")]
)
async def test_forgetting_what_is_not_there_is_one_line(
    db: Database, db_url: str, tmp_path: Path, args: tuple[str, ...]
) -> None:
    code, out = await asyncio.to_thread(cli, tmp_path, db_url, tmp_path / "mail", *args)
    assert code == 1 and len(out.strip().splitlines()) == 1 and "999" in out
