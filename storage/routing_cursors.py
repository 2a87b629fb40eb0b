"""Round-robin cursors: the last staff member each team's assignment went to."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import RoutingCursor


async def of_team(session: AsyncSession, team: str) -> RoutingCursor:
    """The team's cursor, added (unsaved until the flush) when the team has none yet. Read
    without autoflush: the batch's pending rows are not written for it."""
    with session.no_autoflush:
        cursor = await session.scalar(select(RoutingCursor).where(RoutingCursor.team == team))
    if cursor is None:
        cursor = RoutingCursor(team=team, last_staff_id=None)
        session.add(cursor)
    return cursor
