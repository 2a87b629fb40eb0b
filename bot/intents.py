"""Typed outbound intents: what kefu wants said, with no channel's wire format in it.

Handlers build an intent (an agent's Reply, an Acknowledgement, a Survey with its choices, a
Greeting, a FollowUp, a Notice to the customer, a StaffNotice for the team) and queue it in an
Outbound envelope (channel, address, dedupe key) through bot.outbox. The outbox stores it as JSON
(to_payload) and, when the row is due, hands the decoded envelope to the channel's
``send(out)``; each channel renders each kind of intent to its own wire format:

- channels/telegram.py: a message (split at 4096), a reply to the customer's message it answers,
  an inline keyboard for a Survey's choices; a StaffNotice goes to the staff group (in the
  conversation's forum topic, opened on first use) or to an agent's private chat with the bot.
- channels/email.py + channels/mail_compose.py: a MIME message from templates; In-Reply-To and
  References from ``answers``, the "[#42]" subject token from ``conversation_id``, the subject
  from ``title``, Auto-Submitted from the kind.
- channels/webhook.py: the documented callback body (README "Webhooks"); an Acknowledgement adds
  ticket, reason and expected_response_by, a Survey adds {"survey": {"id", "choices"}}.

Everything here is plain data: it imports nothing but the other vocabulary module bot.messages.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any, ClassVar

from bot.messages import Attachment


@dataclass(frozen=True, slots=True, kw_only=True)
class Intent:
    """What every outbound message has. ``language`` is the reader's ("zh", "en"; None: unknown,
    the channel guesses from the text where its own wording needs one)."""

    NAME: ClassVar[str] = ""  # the payload's "intent": which class decodes it
    KIND: ClassVar[str] = ""  # the kind a receiver sees (the webhook body's "type")

    text: str
    language: str | None = None
    conversation_id: int | None = None
    customer_id: int | None = None
    attachments: tuple[Attachment, ...] = ()

    @property
    def kind(self) -> str:
        return self.KIND


@dataclass(frozen=True, slots=True, kw_only=True)
class Threaded(Intent):
    """A message that answers the customer's own: ``answers`` holds the external ids of the
    customer's messages in that thread, oldest first, the one answered last (an email's
    References chain ending with its parent; a Telegram "chat:message" id). ``title`` is the
    title the customer gave the thread (an email's subject), if any."""

    answers: tuple[str, ...] = ()
    title: str | None = None

    @property
    def answered(self) -> str | None:
        return self.answers[-1] if self.answers else None


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply(Threaded):
    """An agent's answer to the customer."""

    NAME: ClassVar[str] = "reply"
    KIND: ClassVar[str] = "reply"


@dataclass(frozen=True, slots=True, kw_only=True)
class Acknowledgement(Threaded):
    """kefu's "we got your message" (a complaint, or a message outside business hours), with the
    time by which a person will answer."""

    NAME: ClassVar[str] = "ack"
    KIND: ClassVar[str] = "ack"

    reason: str = "complaint"  # complaint | outside_hours
    expected_response_by: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Survey(Intent):
    """The satisfaction question after a resolution: the customer answers with one of
    ``choices`` (channels with buttons show them; the others rely on the text)."""

    NAME: ClassVar[str] = "survey"
    KIND: ClassVar[str] = "survey"

    survey_id: int
    choices: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Greeting(Intent):
    """A campaign's greeting (birthday, holiday): kefu writes first, it answers nothing."""

    NAME: ClassVar[str] = "greeting"
    KIND: ClassVar[str] = "greeting"

    campaign: str = ""
    occasion: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class FollowUp(Intent):
    """A follow-up on a resolved conversation (handlers/followup.py)."""

    NAME: ClassVar[str] = "followup"
    KIND: ClassVar[str] = "followup"

    campaign: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Notice(Intent):
    """kefu's own word to a customer that is none of the above (an opt-out confirmation)."""

    NAME: ClassVar[str] = "notice"
    KIND: ClassVar[str] = "notice"

    about: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class StaffNotice(Intent):
    """A post for staff about a conversation (or about none).

    ``about``: mirror (a customer's message shown to staff) | board (where a conversation is
    handled) | complaint | sla | churn (alerts) | answer (kefu's answer to a staff post: a
    command's result, a hint, a refusal).
    ``topic``: the conversation's title among staff; set on posts that may open the conversation's
    own place in the staff room (a forum topic) when it has none yet.
    ``place``: the place the staff channel gave the conversation, or where the staff post this
    answers was written, exactly as the channel reported it (opaque here).
    ``answers``: the staff post(s) it answers, as the channel identified them.
    ``agent``: the staff member whose private chat it is addressed to; ``fallback`` is the staff
    room's address, used when that chat cannot take it (never opened, bot blocked).
    ``merged``: how many posts were coalesced into it while it waited (handlers/staff_feed.py).
    """

    NAME: ClassVar[str] = "staff"
    KIND: ClassVar[str] = "notice"

    about: str = "answer"
    topic: str | None = None
    place: str | None = None
    answers: tuple[str, ...] = ()
    agent: str | None = None
    fallback: str | None = None
    merged: int = 1


@dataclass(frozen=True, slots=True)
class StaffRoom:
    """Where staff work, as bot/app.py wired it: the channel StaffNotices travel on (it decides
    how: topics, private chats), the staff group's address there (None: no group, only staff
    members' private chats), and the longest text that channel sends as one message (None: any
    length; channels.base.Channel.max_text)."""

    channel: str
    group: str | None = None
    max_text: int | None = None


INTENTS: dict[str, type[Intent]] = {
    cls.NAME: cls
    for cls in (Reply, Acknowledgement, Survey, Greeting, FollowUp, Notice, StaffNotice)
}
_TUPLES = frozenset({"answers", "choices"})
_TIMES = frozenset({"expected_response_by"})


@dataclass(frozen=True, slots=True)
class Outbound:
    """The envelope the outbox queues and a channel sends: one intent, to one address on one
    channel, under the receiver's idempotency key (stable across retries)."""

    channel: str
    address: str
    intent: Intent
    dedupe_key: str

    @property
    def text(self) -> str:
        return self.intent.text

    @property
    def kind(self) -> str:
        return self.intent.kind

    @property
    def conversation_id(self) -> int | None:
        return self.intent.conversation_id

    @property
    def customer_id(self) -> int | None:
        return self.intent.customer_id

    @property
    def attachments(self) -> tuple[Attachment, ...]:
        return self.intent.attachments

    def to_payload(self) -> dict[str, Any]:
        return to_payload(self.intent)

    def with_intent(self, intent: Intent, *, address: str | None = None) -> Outbound:
        return replace(self, intent=intent, address=address or self.address)

    @classmethod
    def from_row(
        cls, channel: str, address: str, dedupe_key: str, payload: dict[str, Any]
    ) -> Outbound:
        return cls(channel, address, from_payload(payload, address=address), dedupe_key)


def to_payload(intent: Intent) -> dict[str, Any]:
    """The outbox row's JSON. "kind", "text", "conversation_id" and "customer_id" stay at the top
    as before (listings, the dead-letter log line and `kefu customers forget` read them)."""
    payload: dict[str, Any] = {"intent": intent.NAME, "kind": intent.kind}
    for f in fields(intent):
        value = getattr(intent, f.name)
        if f.name == "attachments":
            payload[f.name] = [a.to_json() for a in value]
        elif f.name in _TUPLES:
            payload[f.name] = list(value)
        elif f.name in _TIMES:
            payload[f.name] = value.isoformat() if value is not None else None
        else:
            payload[f.name] = value
    return payload


def from_payload(payload: dict[str, Any], *, address: str = "") -> Intent:
    """Decodes a row written by to_payload, or by the version before intents (kind + meta;
    ``address``: the row's, which that version's staff posts leave out of their reply ids)."""
    cls = INTENTS.get(str(payload.get("intent")))
    if cls is None:
        return _legacy(payload, address)
    known = {f.name for f in fields(cls)}
    values: dict[str, Any] = {}
    for name, stored in payload.items():
        if name not in known:
            continue  # "intent", "kind", and delivery state such as a staff post's "taken"
        value: Any = stored
        if name == "attachments":
            value = tuple(Attachment.from_json(a) for a in stored or ())
        elif name in _TUPLES:
            value = tuple(stored or ())
        elif name in _TIMES and isinstance(stored, str):
            value = datetime.fromisoformat(stored)
        values[name] = value
    values.setdefault("text", "")
    return cls(**values)


def _legacy(payload: dict[str, Any], address: str) -> Intent:
    """A row queued before intents: {"text", "kind", "conversation_id", "customer_id",
    "attachments", "meta"}, where meta held each channel's wire details. Rendered the same way
    as it would have been."""
    meta: dict[str, Any] = payload.get("meta") or {}
    language = meta.get("language")
    common: dict[str, Any] = {
        "text": payload.get("text", ""),
        "language": str(language) if language else None,
        "conversation_id": payload.get("conversation_id"),
        "customer_id": payload.get("customer_id"),
        "attachments": tuple(Attachment.from_json(a) for a in payload.get("attachments") or ()),
    }
    kind = payload.get("kind", "reply")
    staff = meta.get("staff")
    if isinstance(staff, dict):
        reply_to = staff.get("reply_to")
        return StaffNotice(
            **common,
            about="board" if staff.get("board") else "mirror" if staff.get("mirror") else "answer",
            topic=staff.get("topic_name") if staff.get("mirror") else None,
            place=str(staff["thread"]) if staff.get("thread") is not None else None,
            # The post it answered was in the chat it is addressed to.
            answers=(f"{address}:{reply_to}",) if reply_to is not None else (),
            agent=staff.get("agent"),
            fallback=str(staff["group"]) if staff.get("group") and staff.get("mirror") else None,
            merged=int(staff.get("merged", 1)),
        )
    references = [str(r) for r in meta.get("references") or []]
    parent = meta.get("in_reply_to")
    if parent and str(parent) not in references:
        references.append(str(parent))
    threaded: dict[str, Any] = {"answers": tuple(references), "title": meta.get("subject") or None}
    webhook: dict[str, Any] = meta.get("webhook") or {}
    if kind == "ack":
        expected = webhook.get("expected_response_by")
        return Acknowledgement(
            **common,
            **threaded,
            reason=str(webhook.get("reason") or "complaint"),
            expected_response_by=datetime.fromisoformat(expected) if expected else None,
        )
    question = meta.get("survey") or webhook.get("survey")
    if kind == "survey" and isinstance(question, dict) and question.get("id") is not None:
        return Survey(
            **common,
            survey_id=int(question["id"]),
            choices=tuple(int(n) for n in question.get("choices") or ()),
        )
    if kind == "greeting":
        return Greeting(
            **common,
            campaign=str(meta.get("campaign") or ""),
            occasion=str(meta.get("occasion") or ""),
        )
    if kind == "followup":
        return FollowUp(**common, campaign=str(meta.get("campaign") or ""))
    if kind == "notice":
        return Notice(**common)
    return Reply(**common, **threaded)


__all__ = [
    "Acknowledgement",
    "FollowUp",
    "Greeting",
    "Intent",
    "Notice",
    "Outbound",
    "Reply",
    "StaffNotice",
    "StaffRoom",
    "Survey",
    "Threaded",
    "from_payload",
    "to_payload",
]
