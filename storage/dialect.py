"""The one place that knows kefu runs on two databases: which one a session or connection is on,
and the INSERT that can say ON CONFLICT on it (SQLAlchemy's generic insert cannot; each dialect
has its own)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import DeclarativeBase

Bound = AsyncSession | AsyncConnection | AsyncEngine | Connection | str
Insert = postgresql.Insert | sqlite.Insert


def name(on: Bound) -> str:
    """"sqlite" or "postgresql": the dialect of a session, connection or engine, or a name as is."""
    if isinstance(on, str):
        return on
    if isinstance(on, AsyncSession):
        return on.get_bind().dialect.name
    return on.dialect.name


def is_sqlite(on: Bound) -> bool:
    return name(on) == "sqlite"


def is_postgresql(on: Bound) -> bool:
    return name(on) == "postgresql"


def insert(on: Bound, into: type[DeclarativeBase] | Table | Any) -> Insert:
    """An INSERT for `into` in the dialect of `on`, so that ON CONFLICT clauses can follow."""
    return postgresql.insert(into) if is_postgresql(on) else sqlite.insert(into)
