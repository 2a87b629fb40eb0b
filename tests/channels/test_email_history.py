"""A mailbox that already holds years of mail: kefu reads only what arrives after it connects, a
backfill logs the old mail as history, and nothing old is ever answered."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bot.app import Kefu
from storage.models import ChannelState, OutboxRow
from tests.channels.email_fixtures import (
    Mailbox,
    email_config,
    env_for,
    rows,
    wait_connected,
    wait_for,
)
from tests.servers.kefu import running_kefu
from tests.servers.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
OLD = 500
UNSEEN = 5
COMPLAINT = "我要去消费者协会投诉你们，还要曝光到媒体！订单一个月都没到"


def mail(tag: str, n: int, *, sender: str | None = None, date: datetime | None = None) -> bytes:
    when = (date or datetime.now(UTC)).strftime("%a, %d %b %Y %H:%M:%S +0000")
    return (
        f"From: Customer {n} <{sender or f'c{n}@example.cn'}>\r\nTo: support@kefu.test\r\n"
        f"Subject: {tag} {n}\r\nMessage-ID: <{tag}-{n}@example.cn>\r\nDate: {when}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        f"{COMPLAINT} ({tag} {n})\r\n"
    ).encode()


def acking_config(
    tmp_path: Path, box: Mailbox, db_url: str | None = None, **email: Any
) -> dict[str, Any]:
    config = email_config(tmp_path, box, free_port(), db_url=db_url, **email)
    # Acknowledgements on, so that "nothing is answered" is something that could fail.
    config["routing"] = {"acknowledge_complaints": True}
    return config


async def history(box: Mailbox, folder: str = "INBOX") -> None:
    """500 mails read years ago and 5 nobody has opened yet, with their old arrival dates."""
    long_ago = datetime(2021, 3, 1, 9, 0, tzinfo=UTC)
    client = await box.client()
    try:
        for n in range(OLD + UNSEEN):
            flags = "(\\Seen)" if n < OLD else None
            when = long_ago + timedelta(days=n)
            response = await client.append(
                mail("old", n, date=when), mailbox=folder, flags=flags, date=when
            )
            assert response.result == "OK", response
    finally:
        await client.logout()


async def outbox_count(kefu: Kefu) -> int:
    async with kefu.db.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(OutboxRow)) or 0)


async def test_first_start_reads_nothing_old_and_answers_nothing_old(
    mailbox: Mailbox, tmp_path: Path, db_url: str
) -> None:
    await history(mailbox)
    config = acking_config(tmp_path, mailbox, db_url)
    async with running_kefu(config, env_for(mailbox)) as kefu:
        await wait_connected(kefu)
        await mailbox.append(mail("new", 1))
        found = await wait_for(kefu, lambda r: any(x.external_id == "new-1@example.cn" for x in r))
        # the new mail is a complaint: its acknowledgement is the one thing in the outbox
        deadline = asyncio.get_running_loop().time() + 5
        while await outbox_count(kefu) < 1:
            assert asyncio.get_running_loop().time() < deadline, (
                "the new complaint was not acknowledged"
            )
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        found = await rows(kefu)
        queued = await outbox_count(kefu)
    customers = [r for r in found if r.author_kind == "customer"]
    assert [r.external_id for r in customers] == ["new-1@example.cn"]
    assert queued == 1
    flags = await mailbox.flags()
    assert sum("\\Seen" not in f for f in flags.values()) == UNSEEN  # old mail left as it was


async def test_uidvalidity_change_starts_at_the_new_end(mailbox: Mailbox, tmp_path: Path) -> None:
    client = await mailbox.client()
    assert (await client.create("Support")).result == "OK"
    await client.logout()
    config = acking_config(tmp_path, mailbox, folder="Support")
    async with running_kefu(config, env_for(mailbox)) as kefu:
        await wait_connected(kefu)
        await mailbox.append(mail("new", 1), folder="Support")
        await wait_for(kefu, lambda r: any(x.external_id == "new-1@example.cn" for x in r))
    # The folder is recreated with years of mail in it: a new UIDVALIDITY (RFC 3501 2.3.1.1).
    client = await mailbox.client()
    assert (await client.delete("Support")).result == "OK"
    assert (await client.create("Support")).result == "OK"
    await client.logout()
    await history(mailbox, "Support")
    async with running_kefu(config, env_for(mailbox)) as kefu:
        await wait_connected(kefu)
        await mailbox.append(mail("new", 2), folder="Support")
        await wait_for(kefu, lambda r: any(x.external_id == "new-2@example.cn" for x in r))
        await asyncio.sleep(0.3)
        found = await rows(kefu)
        queued = await outbox_count(kefu)
    customers = sorted(r.external_id or "" for r in found if r.author_kind == "customer")
    assert customers == ["new-1@example.cn", "new-2@example.cn"]
    assert queued == 2


async def test_new_mail_older_than_the_limit_is_logged_but_not_acknowledged(
    mailbox: Mailbox, tmp_path: Path
) -> None:
    config = acking_config(tmp_path, mailbox)
    async with running_kefu(config, env_for(mailbox)) as kefu:
        await wait_connected(kefu)
        # Moved into the folder today, but received by the server ten days ago.
        ten_days = datetime.now(UTC) - timedelta(days=10)
        await mailbox.append(mail("late", 1, date=ten_days), date=ten_days)
        found = await wait_for(kefu, lambda r: any(x.external_id == "late-1@example.cn" for x in r))
        await asyncio.sleep(0.5)
        queued = await outbox_count(kefu)
    [late] = [r for r in found if r.external_id == "late-1@example.cn"]
    assert late.direction == "in" and late.conversation_id is not None
    assert "older than" in late.meta["no_ack"]
    assert queued == 0


async def kefu_cli(
    config: dict[str, Any], tmp_path: Path, env: dict[str, str], *args: str
) -> tuple[int, str, str]:
    path = tmp_path / "config.toml"
    path.write_text(toml(config))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, "--config", str(path),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def toml(config: dict[str, Any]) -> str:
    lines: list[str] = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, (int, float)):
                lines.append(f"{key} = {value}")
            else:
                lines.append(f'{key} = "{value}"')
    return "\n".join(lines) + "\n"


async def test_backfill_logs_history_and_sends_nothing(
    mailbox: Mailbox, tmp_path: Path, db_url: str
) -> None:
    await history(mailbox)
    config = acking_config(tmp_path, mailbox, db_url)
    env = env_for(mailbox)
    code, out, err = await kefu_cli(
        config, tmp_path, env, "email", "backfill", "--since", "2020-01-01"
    )
    assert code == 0, err
    assert f"{OLD + UNSEEN} old messages logged as history" in out, out
    # Twice is the same as once (the log's dedupe), and kefu run afterwards answers none of it.
    code, out, err = await kefu_cli(
        config, tmp_path, env, "email", "backfill", "--since", "2020-01-01"
    )
    assert code == 0, err
    assert (
        "0 old messages logged as history" in out and f"{OLD + UNSEEN} were logged already" in out
    ), out
    async with running_kefu(config, env) as kefu:
        await wait_connected(kefu)
        await mailbox.append(mail("new", 1))
        await wait_for(kefu, lambda r: any(x.external_id == "new-1@example.cn" for x in r))
        await asyncio.sleep(0.3)
        found = await rows(kefu)
        async with kefu.db.sessions() as session:
            queued = list(await session.scalars(select(OutboxRow)))
            state = await session.scalar(
                select(ChannelState).where(ChannelState.channel == "email")
            )
    old = [r for r in found if (r.external_id or "").startswith("old-")]
    assert len(old) == OLD + UNSEEN
    assert {r.meta["kind"] for r in old} == {"history"}
    assert all(r.direction == "event" and r.conversation_id is None for r in old)
    assert old[0].created_at.replace(tzinfo=UTC).year == 2021  # when it was received
    assert "投诉" in old[0].text  # the customer's words, kept
    assert [q.address for q in queued] == ["c1@example.cn"]  # only the new complaint's ack
    assert state is not None and state.value["last_uid"] == OLD + UNSEEN + 1
    flags = await mailbox.flags()
    assert sum("\\Seen" not in f for f in flags.values()) == UNSEEN  # backfill marks nothing read


async def test_backfill_since_a_date_takes_only_what_came_after(
    mailbox: Mailbox, tmp_path: Path
) -> None:
    await history(mailbox)
    config = acking_config(tmp_path, mailbox)
    # history() spaces the mails a day apart from 2021-03-01: 2022-07-14 is day 500.
    code, out, err = await kefu_cli(
        config, tmp_path, env_for(mailbox), "email", "backfill", "--since", "2022-07-14"
    )
    assert code == 0, err
    assert "5 old messages logged as history" in out, out


async def test_backfill_with_a_bad_date_is_one_line(mailbox: Mailbox, tmp_path: Path) -> None:
    config = acking_config(tmp_path, mailbox)
    code, _, err = await kefu_cli(
        config, tmp_path, env_for(mailbox), "email", "backfill", "--since", "last year"
    )
    assert code != 0
    assert "--since" in err and "Traceback" not in err
