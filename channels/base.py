"""The Channel protocol: every channel turns its wire input into bot.messages.Inbound and renders
bot.intents (in an Outbound envelope) to its wire format."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from bot.intents import Outbound
from bot.messages import Inbound

Sink = Callable[[Inbound], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class SendResult:
    external_id: str | None = None  # the channel's id of the sent message (email Message-ID)
    # The place the channel gave the conversation among staff (a Telegram forum topic), opaque to
    # everyone else: the outbox keeps it on the conversation (storage.conversations.set_staff_place)
    # and StaffNotice.place carries it back to the channel on later posts.
    place: str | None = None


class ChannelError(Exception):
    """A send failed; the subclass says whether trying again can help.

    The message is for the log: who refused and how. `detail` is what the other side answered,
    kept with the outbox row for the person fixing the cause but never logged: a receiver's
    refusal often quotes the message back (the customer's name and words)."""

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail

    def stored(self) -> str:
        """The row's error: the message, then what the other side answered."""
        message = str(self) or type(self).__name__
        return f"{message}: {self.detail}" if self.detail else message


class Misconfigured(Exception):
    """A channel cannot start with the settings it was given (a token the service rejects): the
    person running kefu must fix them. bot/app.py reports it as a configuration error."""


class TransientError(ChannelError):
    def __init__(
        self, message: str, *, retry_after: float | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message, detail=detail)
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

    def __init__(
        self, message: str, *, unreachable: bool = False, detail: str | None = None
    ) -> None:
        super().__init__(message, detail=detail)
        # The address itself is gone (bot blocked, mailbox does not exist): stop using it.
        self.unreachable = unreachable


class Channel(Protocol):
    name: str
    # The longest text (UTF-16 units) the channel sends as one message; a longer one it splits
    # when it renders it. None: any length is one message. (The staff feed grows a waiting post
    # only while it stays one message: handlers/staff_feed.py.)
    max_text: int | None

    async def start(self, sink: Sink) -> None: ...

    async def send(self, out: Outbound) -> SendResult: ...

    async def stop(self) -> None: ...
