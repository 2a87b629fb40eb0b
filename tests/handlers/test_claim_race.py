"""/claim by two agents at once (#12): one wins, the other is told it is a colleague's now. Two
desks share nothing but the database, as two kefu processes would; run on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import update

from handlers.staff_group import StaffDesk
from storage.db import Database
from storage.models import Conversation
from tests.handlers import test_staff_commands as desk_world
from tests.handlers.test_staff_commands import ALICE, BOB, LENA, notices, post, status_of

world = desk_world.world  # the fixture: a mirrored conversation, agents alice and bob

ROUNDS = 6


async def test_two_agents_claiming_at_once_one_wins(db: Database, world: dict[str, Any]) -> None:
    cid = world["conversation_id"]
    names = {world["alice"]: "alice", world["bob"]: "bob"}
    for _ in range(ROUNDS):
        async with db.transaction() as session:
            await session.execute(
                update(Conversation).where(Conversation.id == cid).values(assignee=None)
            )
        seen = len(await notices(db))
        await asyncio.gather(
            StaffDesk(db).handle(post("/claim", user=ALICE)),
            StaffDesk(db).handle(post("/claim", user=BOB)),
        )
        texts = (await notices(db))[seen:]
        winners = [t for t in texts if "claimed by" in t]
        assignee, _ = await status_of(db, cid)
        assert assignee is not None
        # Exactly one claim took effect, and it is the one the conversation shows.
        assert winners == [f"✋ #{cid} claimed by {names[assignee]}."], texts
        assert sum("may not claim.any" in t for t in texts) == 1, texts


async def test_a_closed_conversation_is_claimed_or_assigned_by_nobody(
    db: Database, world: dict[str, Any]
) -> None:
    cid = world["conversation_id"]
    async with db.transaction() as session:
        await session.execute(
            update(Conversation).where(Conversation.id == cid).values(status="closed")
        )
    desk = StaffDesk(db)
    await desk.handle(post("/claim", user=ALICE))
    await desk.handle(post("/claim", user=LENA))
    await desk.handle(post("/assign bob", user=LENA))
    assert await status_of(db, cid) == (None, "closed")
    texts = await notices(db)
    assert len(texts) == 3 and all("is closed" in t for t in texts), texts
