"""Single-use deep links that tie a Telegram user to a known customer (kefu customers
link-telegram; handlers/telegram_links.py uses them)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import TelegramLink


def add(session: AsyncSession, token: str, customer_id: int, now: datetime, ttl: timedelta) -> None:
    session.add(
        TelegramLink(token=token, customer_id=customer_id, created_at=now, expires_at=now + ttl)
    )


async def by_token(session: AsyncSession, token: str) -> TelegramLink | None:
    return await session.scalar(select(TelegramLink).where(TelegramLink.token == token))
