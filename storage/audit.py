"""audit_log: every staff action and admin change, with who, what, on what, and when."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import AuditEntry, utcnow


def record(
    session: AsyncSession, actor: str, action: str, subject: str, **detail: Any
) -> AuditEntry:
    entry = AuditEntry(actor=actor, action=action, subject=subject, detail=detail, at=utcnow())
    session.add(entry)
    return entry


async def since(session: AsyncSession, when: datetime | None) -> list[AuditEntry]:
    query = select(AuditEntry).order_by(AuditEntry.id)
    if when is not None:
        query = query.where(AuditEntry.at >= when)
    return list(await session.scalars(query))
