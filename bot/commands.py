"""What a channel hands to handlers besides a customer's message to log: a staff member's post or
command, a survey button press, a customer proving who they are. Plain data, filled in by the
channel that received it (channels/telegram_updates.py today), which names itself in each; read
by handlers that never import a channel."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True)
class LinkRequest:
    """A customer proved who they are: a deep-link payload (/start TOKEN) or their own phone."""

    kind: str  # start | phone
    user_id: str
    value: str  # the start payload, or the phone number as Telegram gave it
    display_name: str | None = None
    language: str | None = None
    # The channel user_id belongs to (the one that received the request): whose identity it is.
    channel: str = field(kw_only=True)


@dataclass(frozen=True, slots=True)
class StaffPost:
    """A message in the staff group, wire-format free: what the staff desk needs to act on it."""

    chat_id: int
    message_id: int
    user_id: int | None
    user_name: str
    text: str
    thread_id: int | None = None  # forum topic, when the group has topics
    reply_to_message_id: int | None = None  # the message it answers, when not just the topic root
    has_media: bool = False
    sent_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    private: bool = False  # in the staff member's own chat with the bot, not the group
    channel: str = field(kw_only=True)  # the channel it was written on: where kefu answers it

    @property
    def key(self) -> str:
        return f"{self.chat_id}:{self.message_id}"


@dataclass(frozen=True, slots=True)
class SurveyPress:
    """A customer pressed a survey button (callback data "survey:<id>:<score>")."""

    query_id: str  # answerCallbackQuery needs it, once, within seconds
    user_id: str
    survey_id: int
    score: int
    chat_id: int | None = None  # the survey message, to mark the chosen score on its keyboard
    message_id: int | None = None
    choices: tuple[int, ...] = ()  # the scores on that keyboard, in order
    language: str | None = None
    channel: str = field(kw_only=True)  # the channel user_id belongs to: whose identity pressed


@dataclass(frozen=True, slots=True)
class PressAnswer:
    """What the customer sees after a press: a short toast, and the score to mark if it counted."""

    text: str
    chosen: int | None = None
