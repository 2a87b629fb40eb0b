"""Durable key/value state for channels, handed to them as plain load/save callables."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from storage.db import Database
from storage.models import ChannelState, utcnow


class StateStore:
    def __init__(self, db: Database, channel: str) -> None:
        self.db = db
        self.channel = channel

    async def load(self, key: str) -> dict[str, Any] | None:
        async with self.db.sessions() as session:
            row = await session.scalar(
                select(ChannelState).where(
                    ChannelState.channel == self.channel, ChannelState.key == key
                )
            )
            return dict(row.value) if row is not None else None

    async def save(self, key: str, value: dict[str, Any]) -> None:
        async with self.db.transaction() as session:
            row = await session.scalar(
                select(ChannelState).where(
                    ChannelState.channel == self.channel, ChannelState.key == key
                )
            )
            if row is None:
                session.add(ChannelState(channel=self.channel, key=key, value=value))
            else:
                row.value = value
                row.updated_at = utcnow()
