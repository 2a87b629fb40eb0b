from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.channels.email_fixtures import dovecot, mailbox  # noqa: F401 - fixtures for this folder
from tests.servers.botapi import BotApiServer

FORUM = -1001234567890
GROUP = -1009876543210


@pytest.fixture
async def botapi() -> AsyncIterator[BotApiServer]:
    async with BotApiServer(forum_chats={FORUM}, group_chats={GROUP}) as server:
        yield server
