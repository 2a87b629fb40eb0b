from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from storage.db import Database
from tests.servers.postgres import PostgresServer


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> str:
    """The storage and pipeline suite runs once on each database kefu supports."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/kefu.db"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    await database.upgrade()
    try:
        yield database
    finally:
        await database.dispose()
