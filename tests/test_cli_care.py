"""`kefu conversations resolve|pending|reopen|close`, `kefu audit` and `kefu report` with roles."""

from __future__ import annotations

import asyncio
import getpass
import json
from pathlib import Path

from sqlalchemy import select

from bot.config import parse_config
from bot.messages import Inbound
from bot.plugins import pipeline as plugged_pipeline
from handlers.routing import Router
from storage.db import Database
from storage.models import AuditEntry, Conversation
from tests.test_cli import kefu, query


def seed(config: Path) -> int:
    async def go() -> int:
        db = Database(f"sqlite+aiosqlite:///{config.parent}/kefu.db")
        await db.upgrade()
        pipeline = plugged_pipeline(db, route=Router(parse_config({})))
        receipt = await pipeline.receive(
            Inbound("webhook", "shop:1", "shop:u1", "the parcel arrived broken, unacceptable")
        )
        await pipeline.close()
        async with db.sessions() as s:
            assignee = await s.scalar(
                select(Conversation.assignee).where(Conversation.id == receipt.conversation_id)
            )
        await db.dispose()
        assert assignee is not None  # amy, the only agent on duty when it arrived
        return receipt.conversation_id or 0

    return asyncio.run(go())


def test_lifecycle_commands_enforce_roles_and_are_audited(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\nurl = "sqlite+aiosqlite:///{tmp_path}/kefu.db"\n')
    assert kefu(config, "staff", "add", "--name", "amy")[0] == 0
    cid = seed(config)
    assert kefu(config, "staff", "add", "--name", "bob")[0] == 0
    assert kefu(config, "staff", "add", "--name", "lou", "--role", "lead")[0] == 0

    code, _, err = kefu(config, "conversations", "resolve", str(cid), "--as", "bob")
    assert code == 1 and "bob (agent) may not resolve.any" in err
    code, out, _ = kefu(config, "conversations", "resolve", str(cid), "--as", "amy")
    assert code == 0 and "open -> resolved" in out
    code, _, err = kefu(config, "conversations", "reopen", str(cid), "--as", "amy")
    assert code == 1 and "needs role lead" in err
    assert kefu(config, "conversations", "reopen", str(cid), "--as", "lou")[0] == 0
    code, _, err = kefu(config, "conversations", "close", str(cid), "--as", "nobody")
    assert code == 1 and "no staff member of that name" in err
    assert kefu(config, "conversations", "close", str(cid))[0] == 0  # the OS user is an admin

    code, _, err = kefu(config, "audit", "--as", "lou")
    assert code == 1 and "needs role admin" in err
    code, out, _ = kefu(config, "audit")
    assert code == 0 and "lou" in out
    actions = [
        (e.actor, e.action) for e in query(config, select(AuditEntry).order_by(AuditEntry.id))
    ]
    assert [a for a in actions if a[1].startswith("conversation.")] == [
        ("amy", "conversation.resolve"),
        ("lou", "conversation.reopen"),
        (getpass.getuser(), "conversation.close"),
    ]

    code, out, _ = kefu(config, "report", "--as", "lou")
    assert code == 0 and "Complaints: 1" in out and "CSAT" in out
    code, out, _ = kefu(config, "report", "--format", "json", "--since", "2000-01-01")
    assert code == 0 and json.loads(out)["complaints"]["total"] == 1
    code, _, err = kefu(config, "report", "--format", "xml")
    assert code == 2 and "--format has value 'xml'" in err
