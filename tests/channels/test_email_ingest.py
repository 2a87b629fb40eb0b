"""Mail appended into a real Dovecot is read by a running kefu and lands in the log."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.app import Kefu
from bot.messages import Inbound
from storage.models import ChannelState, Identity, Interaction, OutboxRow
from tests.channels.email_fixtures import (
    EXPECT,
    Mailbox,
    email_config,
    env_for,
    fixture_bytes,
    fixture_names,
    rows,
    wait_connected,
    wait_for,
)
from tests.servers.dovecot import DovecotServer
from tests.servers.kefu import running_kefu
from tests.servers.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def simple(n: int, *, sender: str = "ann@example.com", subject: str = "help") -> bytes:
    return (
        f"From: Ann <{sender}>\r\nTo: support@kefu.test\r\nSubject: {subject} {n}\r\n"
        f"Message-ID: <msg-{n}-{sender}>\r\nDate: Mon, 1 Apr 2024 10:00:00 +0000\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\nmessage number {n}\r\n"
    ).encode()


async def checkpoint(kefu: Kefu, last_uid: int, timeout: float = 5.0) -> dict[str, int]:
    """The folder's saved checkpoint once it reached last_uid (it is saved right after \\Seen)."""
    deadline = time.monotonic() + timeout
    while True:
        async with kefu.db.sessions() as session:
            state = await session.scalar(
                select(ChannelState).where(ChannelState.channel == "email")
            )
        if state is not None and state.value.get("last_uid") == last_uid:
            return dict(state.value)
        assert time.monotonic() < deadline, f"checkpoint is {state.value if state else None}"
        await asyncio.sleep(0.05)


def test_every_fixture_has_expectations() -> None:
    assert sorted(EXPECT) == fixture_names()


def customer_rows(rows: list[Interaction]) -> list[Interaction]:
    return [r for r in rows if r.author_kind == "customer"]


@pytest.mark.parametrize("name", fixture_names())
async def test_fixture_is_logged(name: str, mailbox: Mailbox, tmp_path: Path) -> None:
    expect = EXPECT[name]
    raw = fixture_bytes(name)
    config = email_config(tmp_path, mailbox, free_port())
    async with running_kefu(config, env_for(mailbox)) as kefu:
        await wait_connected(kefu)
        await mailbox.append(raw)
        # Only what the mail itself became: a complaint also gets a staff-notice event.
        found = await wait_for(kefu, lambda r: len(customer_rows(r)) == 1)
        flags = await mailbox.flags()
    [row] = customer_rows(found)
    kind = expect.get("kind", "message")
    assert row.direction == ("in" if kind == "message" else "event")
    assert row.author_id == expect["address"]
    for text in expect.get("has", []):
        assert text in row.text
    for text in expect.get("lacks", []):
        assert text not in row.text
    assert [a["name"] for a in row.attachments] == expect.get("files", [])
    for attachment in row.attachments:
        assert Path(attachment["url"].removeprefix("file://")).exists()
        assert attachment["size"] > 0
    if kind == "message":
        assert row.conversation_id is not None
        # The log keeps what an answer threads by (Inbound.title and .thread).
        if "subject" in expect:
            assert row.meta["title"] == expect["subject"]
    else:
        assert row.conversation_id is None
        assert row.meta["kind"] == expect["meta_kind"]
    if "failed" in expect:
        assert row.meta["failed_recipients"] == expect["failed"]
    for defect in expect.get("defects", []):
        assert defect in row.meta["defects"]
    assert Path(row.meta["raw_path"]).read_bytes() == raw  # nothing is lost
    assert flags == {1: "\\Seen"}  # acknowledged once committed


async def test_idle_push_is_logged_within_two_seconds(mailbox: Mailbox, tmp_path: Path) -> None:
    config = email_config(
        tmp_path, mailbox, free_port(), poll_interval_seconds=60, idle_recheck_seconds=60
    )
    async with running_kefu(config, env_for(mailbox)) as kefu:
        await wait_connected(kefu)
        await asyncio.sleep(0.3)  # let it settle into IDLE
        started = time.monotonic()
        await mailbox.append(simple(1))
        await wait_for(kefu, lambda r: len(r) == 1, timeout=2.0)
        elapsed = time.monotonic() - started
    assert elapsed < 2.0


async def test_polling_when_the_server_has_no_idle(tmp_path: Path) -> None:
    server = DovecotServer(idle=False)
    server.start()
    try:
        username, password = server.new_user()
        box = Mailbox(server, username, password)
        config = email_config(tmp_path, box, free_port(), poll_interval_seconds=0.2)
        async with running_kefu(config, env_for(box)) as kefu:
            await wait_connected(kefu)
            assert not kefu.channels["email"].reader.client.has_capability("IDLE")  # type: ignore[attr-defined]
            await box.append(simple(1), simple(2))
            await wait_for(kefu, lambda r: len(r) == 2, timeout=5)
    finally:
        server.stop()


async def test_dovecot_restart_loses_nothing_and_repeats_nothing(
    dovecot: DovecotServer, mailbox: Mailbox, tmp_path: Path
) -> None:
    config = email_config(tmp_path, mailbox, free_port())
    async with running_kefu(config, env_for(mailbox)) as kefu:
        await wait_connected(kefu)
        await mailbox.append(simple(1), simple(2))
        await wait_for(kefu, lambda r: len(r) == 2)
        dovecot.restart()
        await mailbox.append(simple(3))  # while kefu reconnects
        await wait_for(kefu, lambda r: len(r) == 3, timeout=15)
        await wait_connected(kefu)
        await mailbox.append(simple(4))
        found = await wait_for(kefu, lambda r: len(r) == 4, timeout=10)
        await asyncio.sleep(0.5)
        found = await rows(kefu)
    assert sorted(r.external_id for r in found) == [f"msg-{n}-ann@example.com" for n in range(1, 5)]
    assert set((await mailbox.flags()).values()) == {"\\Seen"}


async def test_restarted_kefu_resumes_from_its_checkpoint(
    mailbox: Mailbox, tmp_path: Path, db_url: str
) -> None:
    config = email_config(tmp_path, mailbox, free_port(), db_url=db_url)
    async with running_kefu(config, env_for(mailbox)) as kefu:
        await wait_connected(kefu)
        await mailbox.append(simple(1))
        await wait_for(kefu, lambda r: len(r) == 1)
    await mailbox.append(simple(2), simple(3))  # while kefu is down
    async with running_kefu(config, env_for(mailbox)) as kefu:
        await wait_connected(kefu)
        found = await wait_for(kefu, lambda r: len(r) == 3)
        await checkpoint(kefu, 3)
    assert [r.external_id for r in found] == [f"msg-{n}-ann@example.com" for n in (1, 2, 3)]


async def test_uidvalidity_change_starts_at_the_end_without_duplicates(
    mailbox: Mailbox, tmp_path: Path
) -> None:
    config = email_config(tmp_path, mailbox, free_port(), folder="Support")
    client = await mailbox.client()
    assert (await client.create("Support")).result == "OK"
    await client.logout()
    async with running_kefu(config, env_for(mailbox)) as kefu:
        await wait_connected(kefu)
        await mailbox.append(simple(1), simple(2), folder="Support")
        await wait_for(kefu, lambda r: len(r) == 2)
        before = await checkpoint(kefu, 2)
    # The folder is recreated: a new UIDVALIDITY, UIDs from 1 again (RFC 3501 2.3.1.1). What is in
    # it then is history (see test_email_history.py); what arrives after kefu connects is read.
    client = await mailbox.client()
    assert (await client.delete("Support")).result == "OK"
    assert (await client.create("Support")).result == "OK"
    await client.logout()
    await mailbox.append(simple(1), simple(2), folder="Support")
    async with running_kefu(config, env_for(mailbox)) as kefu:
        await wait_connected(kefu)
        await mailbox.append(simple(2), simple(3), folder="Support")
        await wait_for(kefu, lambda r: len(r) == 3)
        await asyncio.sleep(0.5)
        found = await rows(kefu)
        state = await checkpoint(kefu, 4)
    assert sorted(r.external_id for r in found) == [f"msg-{n}-ann@example.com" for n in (1, 2, 3)]
    assert state["uidvalidity"] != before["uidvalidity"]
    assert (await mailbox.flags("Support")) == {1: "", 2: "", 3: "\\Seen", 4: "\\Seen"}


async def test_processed_mail_is_moved(mailbox: Mailbox, tmp_path: Path) -> None:
    config = email_config(tmp_path, mailbox, free_port(), processed_folder="Processed")
    async with running_kefu(config, env_for(mailbox)) as kefu:
        await wait_connected(kefu)
        await mailbox.append(simple(1), simple(2))
        await wait_for(kefu, lambda r: len(r) == 2)
        await asyncio.sleep(0.3)
    assert await mailbox.flags("INBOX") == {}
    assert len(await mailbox.flags("Processed")) == 2


async def test_malformed_mail_does_not_stop_the_channel(
    mailbox: Mailbox, tmp_path: Path, db_url: str
) -> None:
    config = email_config(tmp_path, mailbox, free_port(), db_url=db_url)
    async with running_kefu(config, env_for(mailbox)) as kefu:
        await wait_connected(kefu)
        await mailbox.append(
            simple(1),
            fixture_bytes("malformed__no_sender_no_text"),
            b"\x00\xff garbage\r\n",
            simple(2),
        )
        found = await wait_for(kefu, lambda r: len(r) == 4)
    assert [r.direction for r in found] == ["in", "event", "event", "in"]
    assert all(Path(r.meta["raw_path"]).exists() for r in found)


async def test_own_address_is_an_event_and_never_answered(mailbox: Mailbox, tmp_path: Path) -> None:
    config = email_config(tmp_path, mailbox, free_port())
    async with running_kefu(config, env_for(mailbox)) as kefu:
        await wait_connected(kefu)
        await mailbox.append(simple(1, sender="Support@Kefu.test"))
        found = await wait_for(kefu, lambda r: len(r) == 1)
    assert found[0].direction == "event" and found[0].conversation_id is None
    assert found[0].meta["kind"] == "own_address"


async def test_replies_thread_into_the_conversation(
    mailbox: Mailbox, tmp_path: Path, db_url: str
) -> None:
    config = email_config(tmp_path, mailbox, free_port(), db_url=db_url)
    first = simple(1, subject="broken cup")
    reply = (
        b"From: Ann <ann@example.com>\r\nTo: support@kefu.test\r\nSubject: Re: broken cup\r\n"
        b"Message-ID: <reply-1@example.com>\r\nIn-Reply-To: <msg-1-ann@example.com>\r\n"
        b"References: <msg-1-ann@example.com>\r\n\r\nI forgot the photo.\r\n"
    )
    by_token = (
        b"From: Ann <ann@example.com>\r\nTo: support@kefu.test\r\nSubject: Another [#1]\r\n"
        b"Message-ID: <token-1@example.com>\r\n\r\nand one more thing\r\n"
    )
    async with running_kefu(config, env_for(mailbox)) as kefu:
        await wait_connected(kefu)
        await mailbox.append(first)
        found = await wait_for(kefu, lambda r: len(r) == 1)
        # a second conversation for Ann, so "her open conversation" alone would pick the wrong one
        await kefu.receive(
            Inbound("email", "other-1@example.com", "ann@example.com", "x", kind="message")
        )
        async with kefu.db.transaction() as session:
            rows_ = list(await session.scalars(select(Interaction).order_by(Interaction.id)))
            assert rows_[-1].conversation_id == rows_[0].conversation_id
        await mailbox.append(reply, by_token)
        found = await wait_for(kefu, lambda r: len(r) == 4)
    assert found[2].meta["in_reply_to"] == "msg-1-ann@example.com"
    assert found[2].conversation_id == found[0].conversation_id
    assert found[3].conversation_id == found[0].conversation_id


async def kefu_wrote(kefu: Kefu, address: str, message_id: str) -> None:
    """An outbox row kefu sent to `address` with that Message-ID (what the bounce will quote)."""
    async with kefu.db.transaction() as session:
        session.add(
            OutboxRow(
                channel="email",
                address=address,
                payload={"text": "hello"},
                dedupe_key=f"sent-{message_id}",
                status="sent",
                attempts=1,
                external_id=message_id,
            )
        )


async def test_bounce_marks_the_identity_unreachable(
    mailbox: Mailbox, tmp_path: Path, db_url: str
) -> None:
    config = email_config(tmp_path, mailbox, free_port(), db_url=db_url)
    async with running_kefu(config, env_for(mailbox)) as kefu:
        await wait_connected(kefu)
        await kefu.receive(
            Inbound("email", "q-1@example.org", "gone.customer@example.org", "question")
        )
        await kefu_wrote(kefu, "gone.customer@example.org", "kefu.0bad0bad@kefu.test")
        await mailbox.append(fixture_bytes("bounce__dsn"))
        found = await wait_for(kefu, lambda r: any(x.meta.get("kind") == "bounced" for x in r))
        async with kefu.db.sessions() as session:
            identity = await session.scalar(
                select(Identity).where(Identity.address == "gone.customer@example.org")
            )
    assert identity is not None and identity.reachable is False
    assert "5.1.1" in (identity.unreachable_reason or "")
    bounced = next(r for r in found if r.meta.get("kind") == "bounced")
    assert bounced.conversation_id == found[0].conversation_id


async def test_a_bounce_for_mail_kefu_never_sent_marks_nothing(
    mailbox: Mailbox, tmp_path: Path, db_url: str
) -> None:
    """A forged bounce (anyone can send one) does not make a customer unreachable."""
    config = email_config(tmp_path, mailbox, free_port(), db_url=db_url)
    async with running_kefu(config, env_for(mailbox)) as kefu:
        await wait_connected(kefu)
        await kefu.receive(
            Inbound("email", "q-1@example.org", "gone.customer@example.org", "question")
        )
        # kefu did write to them, but not the mail this bounce quotes
        await kefu_wrote(kefu, "gone.customer@example.org", "kefu.another@kefu.test")
        await mailbox.append(fixture_bytes("bounce__dsn"))
        found = await wait_for(
            kefu, lambda r: any(x.meta.get("kind") == "bounce_ignored" for x in r)
        )
        async with kefu.db.sessions() as session:
            identity = await session.scalar(
                select(Identity).where(Identity.address == "gone.customer@example.org")
            )
    assert identity is not None and identity.reachable is True
    assert not any(r.meta.get("kind") == "bounced" for r in found)
    assert any(r.meta.get("kind") == "bounce" for r in found)  # the bounce itself is still logged


async def test_mail_appears_in_kefu_log_export(mailbox: Mailbox, tmp_path: Path) -> None:
    config = email_config(tmp_path, mailbox, free_port())
    async with running_kefu(config, env_for(mailbox)) as kefu:
        await wait_connected(kefu)
        await mailbox.append(fixture_bytes("plain__gbk_base64"))
        await wait_for(kefu, lambda r: len(r) == 1)
    path = tmp_path / "config.toml"
    path.write_text(f'[storage]\nurl = "{config["storage"]["url"]}"\n')
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "log", "export", "--config", str(path),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    exported = [json.loads(line) for line in out.decode().splitlines()]
    assert exported[0]["channel"] == "email" and exported[0]["direction"] == "in"
    assert "到现在还没有发货" in exported[0]["text"]


async def test_a_mail_that_never_commits_does_not_hold_the_folder_up(
    mailbox: Mailbox, tmp_path: Path, db_url: str
) -> None:
    """Whatever makes one message's commit fail every pass, the reader gets past it: after a few
    passes it is logged as an "unloggable" event (raw kept) and later mail flows again."""
    config = email_config(tmp_path, mailbox, free_port(), db_url=db_url)

    async def refuse(session: object, logged: Any) -> None:
        if logged.inbound.external_id == "msg-2-ann@example.com":
            raise ValueError("this one cannot be stored")

    async with running_kefu(config, env_for(mailbox)) as kefu:
        await wait_connected(kefu)
        kefu.pipeline.observers.append(refuse)
        await mailbox.append(simple(1), simple(2), simple(3))
        found = await wait_for(
            kefu, lambda r: any(x.meta.get("kind") == "unloggable" for x in r), timeout=20
        )
        await mailbox.append(simple(4))
        found = await wait_for(
            kefu, lambda r: any(x.external_id == "msg-4-ann@example.com" for x in r)
        )
        flags = await mailbox.flags()
    [stuck] = [r for r in found if r.meta.get("kind") == "unloggable"]
    assert "ValueError: this one cannot be stored" in stuck.text
    assert Path(stuck.meta["raw_path"]).read_bytes().find(b"message number 2") > 0
    assert sorted(r.external_id for r in found if r.direction == "in") == [
        f"msg-{n}-ann@example.com" for n in (1, 3, 4)
    ]
    assert set(flags.values()) == {"\\Seen"}


async def test_large_mail_is_parsed_in_another_process(
    mailbox: Mailbox, tmp_path: Path, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Parsing holds the GIL, so a thread stalls the event loop on a large mail (figures:
    bench/email_loop_stall.py). The malformed-mail warning is logged where the parse ran: in a
    worker process, and forwarded to kefu's log. Stopping kefu ends the workers."""
    from channels.email import PROCESS_PARSE_BYTES, EmailChannel

    large = b"\x00\xff garbage\r\n" + b"x" * (PROCESS_PARSE_BYTES + 1) + b"\r\n"
    config = email_config(tmp_path, mailbox, free_port(), db_url=db_url)
    caplog.set_level("WARNING", logger="kefu.email")
    async with running_kefu(config, env_for(mailbox)) as kefu:
        await wait_connected(kefu)
        await mailbox.append(simple(1), large)
        found = await wait_for(kefu, lambda r: len(r) == 2)
        [channel] = [c for c in kefu.channels.values() if isinstance(c, EmailChannel)]
        assert channel._pool is not None
        workers = list(channel._pool._processes.values())  # type: ignore[union-attr]
    assert [r.direction for r in found] == ["in", "event"]
    [record] = [r for r in caplog.records if r.getMessage().startswith("email.parse.malformed")]
    assert record.process != os.getpid()
    assert record.process in {w.pid for w in workers}
    assert channel._pool is None and not any(w.is_alive() for w in workers)


async def test_a_burst_of_mail_is_parsed_in_the_workers_and_logged_in_order(
    mailbox: Mailbox,
    tmp_path: Path,
    db_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many messages at once (a restart, an outage) are parsed in the worker processes in runs,
    each run committed while the next is parsed, the next fetch prepared meanwhile: all of them
    logged once, in UID order, then \\Seen and the checkpoint. The malformed one's warning comes
    from a worker."""
    from channels import email as channel_module
    from channels.email import PROCESS_PARSE_COUNT, EmailChannel

    # several fetches of several runs each, with a fetch that is not a multiple of a run
    monkeypatch.setattr(channel_module, "FETCH_CHUNK", 2 * PROCESS_PARSE_COUNT + 3)
    monkeypatch.setattr(channel_module, "PARSE_RUN", 10)
    count = 3 * channel_module.FETCH_CHUNK + 7
    broken = count // 2
    mails = [
        b"\x00\xff garbage\r\n" if n == broken else simple(n) for n in range(1, count + 1)
    ]
    config = email_config(tmp_path, mailbox, free_port(), db_url=db_url)
    caplog.set_level("WARNING", logger="kefu.email")
    async with running_kefu(config, env_for(mailbox)) as kefu:
        await wait_connected(kefu)
    await mailbox.append(*mails)  # while kefu is down
    async with running_kefu(config, env_for(mailbox)) as kefu:
        await wait_connected(kefu)
        [channel] = [c for c in kefu.channels.values() if isinstance(c, EmailChannel)]
        assert channel._pool is not None
        workers = {w.pid for w in channel._pool._processes.values()}  # type: ignore[union-attr]
        await checkpoint(kefu, count, timeout=30)
        found = [r for r in await rows(kefu) if r.direction in ("in", "event")]
    assert [r.external_id for r in found if r.direction == "in"] == [
        f"msg-{n}-ann@example.com" for n in range(1, count + 1) if n != broken
    ]
    assert len(found) == count
    assert set((await mailbox.flags()).values()) == {"\\Seen"}
    [record] = [r for r in caplog.records if r.getMessage().startswith("email.parse.malformed")]
    assert record.process in workers
