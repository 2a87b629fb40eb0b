"""Round-robin cursors: the last staff member each team's assignment went to."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage import dialect
from storage.models import RoutingCursor


async def last_of(session: AsyncSession, team: str) -> int | None:
    """The staff id the team's last assignment went to. Read without autoflush: the batch's
    pending rows are not written for it."""
    with session.no_autoflush:
        return await session.scalar(
            select(RoutingCursor.last_staff_id).where(RoutingCursor.team == team)
        )


async def advance(session: AsyncSession, team: str, staff_id: int, at: datetime) -> None:
    """The team's next round-robin assignment starts after `staff_id`."""
    statement = dialect.insert(session, RoutingCursor).values(
        team=team, last_staff_id=staff_id, updated_at=at
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=["team"],
            set_={"last_staff_id": staff_id, "updated_at": at},
        )
    )
