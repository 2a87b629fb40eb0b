"""Typed views of what SQLAlchemy's type stubs leave loose: an UPDATE's or DELETE's row count
(`AsyncSession.execute` is typed as returning a plain Result) and a mapped class's Table (the
declarative `__table__` is typed as any FromClause)."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, Result, Table
from sqlalchemy.orm import DeclarativeBase


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE matched (0 where the driver does not say)."""
    return cast("CursorResult[Any]", result).rowcount or 0


def table_of(model: type[DeclarativeBase]) -> Table:
    table = model.__table__
    assert isinstance(table, Table), model
    return table
