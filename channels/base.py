"""The Channel protocol: every channel translates its wire format to and from bot.messages."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from bot.messages import Inbound, Outbound

Sink = Callable[[Inbound], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class SendResult:
    external_id: str | None = None  # the channel's id of the sent message (email Message-ID)
    # A thread the channel opened for the conversation (a Telegram forum topic): kept on the
    # conversation as staff_thread so later messages go to the same place.
    thread: str | None = None


class ChannelError(Exception):
    """A send failed; the subclass says whether trying again can help."""


class TransientError(ChannelError):
    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Deferred(ChannelError):
    """Not sent yet, and not a failure: a rate limit or quiet hours says when to try again.

    The outbox moves the row's next attempt by ``retry_after`` seconds without counting an
    attempt, so a message that waits its turn behind a channel's limit never runs out of tries.
    """

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(ChannelError):
    """Will fail the same way every time: the outbox marks the row dead at once."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        # The address itself is gone (bot blocked, mailbox does not exist): stop using it.
        self.unreachable = unreachable


class Channel(Protocol):
    name: str

    async def start(self, sink: Sink) -> None: ...

    async def send(self, out: Outbound) -> SendResult: ...

    async def stop(self) -> None: ...
