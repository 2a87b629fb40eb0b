"""What flows from channels into the pipeline: normalised, frozen, wire-format free.

(What flows out, to channels, is in bot/intents.py.)"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Attachment:
    kind: str = "file"  # file | photo | document | voice | video | location | contact
    url: str | None = None
    name: str | None = None
    mime_type: str | None = None
    size: int | None = None
    file_id: str | None = None
    caption: str | None = None
    # Shown inside the message's body rather than attached to it (a mail's image embedded by
    # Content-ID: a signature's logo, a pasted screenshot); None: attached.
    inline: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Attachment:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


# Inbound kinds in which the customer says something (not an edit or a channel event): these open
# and reopen conversations, are acknowledged and can carry an opt-out.
SPOKEN = frozenset({"message", "complaint"})


@dataclass(frozen=True, slots=True)
class Inbound:
    channel: str
    external_id: str  # unique within the channel: the idempotency key of the message
    address: str  # who wrote, in the channel's terms (telegram user id, email, "source:user")
    text: str
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    kind: str = "message"  # message | complaint | edit | event
    display_name: str | None = None
    language: str | None = None
    attachments: tuple[Attachment, ...] = ()
    # Threading hints, strongest first: external ids this message answers (email In-Reply-To and
    # References, a Telegram reply), then a conversation id the sender named (a "[#42]" subject
    # token).
    reply_to: tuple[str, ...] = ()
    conversation_hint: int | None = None
    # The thread this message continues, for whoever answers it (bot.intents.Threaded carries
    # them back to the channel): the external ids of the messages it follows, oldest first (an
    # email's References), and the title its sender gave the thread (an email's subject).
    thread: tuple[str, ...] = ()
    title: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


# The log row's meta keys for Inbound.thread and Inbound.title (bot/pipeline.py writes them).
THREAD, TITLE = "thread", "title"


def logged_thread(meta: Mapping[str, Any] | None) -> tuple[tuple[str, ...], str | None]:
    """(thread, title) of a logged inbound message, from its row's meta. Rows logged before
    Inbound carried them kept the email channel's own notes instead ("references", "subject"):
    an answer to such a row is threaded the same way."""
    meta = meta or {}
    if THREAD in meta or TITLE in meta:
        earlier, title = meta.get(THREAD), meta.get(TITLE)
    else:
        earlier, title = meta.get("references"), meta.get("subject")
    return tuple(str(r) for r in earlier or ()), str(title) if title else None


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the pipeline committed for one Inbound; a channel acknowledges only after this."""

    status: str  # accepted | duplicate
    interaction_id: int
    customer_id: int | None
    conversation_id: int | None
