"""kefu's PostgreSQL pool replaces a connection the server ended before anyone uses it."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import pytest
from sqlalchemy import text

from storage.db import Database
from tests.servers.postgres import PostgresServer

pytestmark = pytest.mark.postgres


async def test_a_connection_the_server_ended_is_replaced(postgres: PostgresServer) -> None:
    db = Database(postgres.create_database())
    try:
        async with db.transaction() as session:
            await session.execute(text("SELECT 1"))
        admin = await asyncpg.connect(db.url.set(drivername="postgresql").render_as_string(False))
        ended = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND datname = current_database()"
        )
        await admin.close()
        assert ended == 1
        for _ in range(3):  # not one failed statement
            async with db.transaction() as session:
                assert await session.scalar(text("SELECT 1")) == 1
    finally:
        await db.dispose()


async def test_a_connection_a_cancelled_statement_left_is_replaced(
    postgres: PostgresServer,
) -> None:
    db = Database(postgres.create_database())
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.3):
                async with db.transaction() as session:
                    await session.execute(text("SELECT pg_sleep(3)"))
        for _ in range(3):  # not one failed statement
            async with db.transaction() as session:
                assert await session.scalar(text("SELECT 1")) == 1
    finally:
        await db.dispose()
