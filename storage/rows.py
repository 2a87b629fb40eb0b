"""Row helpers shared by the storage modules: typed views of what SQLAlchemy's type stubs leave
loose (an UPDATE's or DELETE's row count: `AsyncSession.execute` is typed as returning a plain
Result; a mapped class's Table: the declarative `__table__` is typed as any FromClause), and ids
reserved ahead of a bulk insert."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import CursorResult, Result, Table, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase

from storage import dialect


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE matched (0 where the driver does not say)."""
    return cast("CursorResult[Any]", result).rowcount or 0


def table_of(model: type[DeclarativeBase]) -> Table:
    table = model.__table__
    assert isinstance(table, Table), model
    return table


async def reserve_ids(session: AsyncSession, table: Table, n: int) -> list[int]:
    """Primary keys for n rows about to be inserted with one executemany.

    Inserting row by row to learn each id costs ~10x (RETURNING with many rows is sent row by
    row to keep its order); knowing the ids first lets one executemany do the work (a campaign's
    log, outbox and delivery rows; an import's customers and the identities pointing at them).
    SQLite: every write transaction began IMMEDIATE, so this writer holds the lock and max(id)
    cannot move. PostgreSQL: the table's sequence hands out ids that no other session will get."""
    if n == 0:
        return []
    if dialect.is_postgresql(session):
        rows = await session.execute(
            text(
                f"SELECT nextval(pg_get_serial_sequence('{table.name}', 'id'))"
                " FROM generate_series(1, :n)"
            ),
            {"n": n},
        )
        return [int(r[0]) for r in rows]
    top = await session.scalar(select(func.max(table.c.id))) or 0
    return list(range(top + 1, top + n + 1))


async def insert_many(session: AsyncSession, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await session.execute(insert(table), list(rows))
