"""What flows from channels into the pipeline: normalised, frozen, wire-format free.

(What flows out, to channels, is in bot/intents.py.)"""

from __future__ import annotations

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
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the pipeline committed for one Inbound; a channel acknowledges only after this."""

    status: str  # accepted | duplicate
    interaction_id: int
    customer_id: int | None
    conversation_id: int | None
