"""Telegram updates -> kefu's terms: a customer Inbound, a staff-group post, or nothing.

Pure functions over python-telegram-bot's Update objects; no network, no storage. The dispatch
tables name every message content kefu understands; anything else is an explicit "unsupported".
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass
from datetime import UTC, datetime

from telegram import (
    Audio,
    CallbackQuery,
    Chat,
    ChatMemberUpdated,
    Document,
    Message,
    Update,
    Video,
    Voice,
)

from bot.commands import LinkRequest as LinkRequest
from bot.commands import PressAnswer as PressAnswer
from bot.commands import StaffPost as StaffPost
from bot.commands import SurveyPress as SurveyPress
from bot.language import primary_tag
from bot.messages import Attachment, Inbound

CHANNEL = "telegram"


@dataclass(frozen=True, slots=True)
class CustomerUpdate:
    inbound: Inbound
    link: LinkRequest | None = None


@dataclass(frozen=True, slots=True)
class Ignored:
    reason: str
    untranslatable: bool = False  # not something kefu chose to ignore: it could not be read


Translated = CustomerUpdate | StaffPost | SurveyPress | Ignored

SURVEY_PREFIX = "survey"
# Telegram caps callback_data at 64 bytes; "survey:<id>:<score>" stays far below for any id.
CALLBACK_DATA_LIMIT = 64


def message_key(chat_id: int, message_id: int) -> str:
    """The external id of a Telegram message: message ids are unique only within their chat."""
    return f"{chat_id}:{message_id}"


def translate(
    update: Update, *, staff_chat_id: int | None, staff_ids: Container[int] = ()
) -> Translated:
    """`staff_ids`: Telegram user ids of active staff; their private messages to the bot are staff
    posts (answers to the conversations delivered there), not customer messages."""
    if update.message is not None:
        return _message(update.message, staff_chat_id, staff_ids, edited=False)
    if update.edited_message is not None:
        return _message(update.edited_message, staff_chat_id, staff_ids, edited=True)
    if update.my_chat_member is not None:
        return _membership(update.my_chat_member)
    if update.callback_query is not None:
        return _callback(update.callback_query)
    return Ignored(f"update type not handled: {_update_kind(update)}")


def _update_kind(update: Update) -> str:
    for name in ("channel_post", "edited_channel_post", "inline_query", "chat_member"):
        if getattr(update, name, None) is not None:
            return name
    return "unknown"


def _message(
    message: Message, staff_chat_id: int | None, staff_ids: Container[int], *, edited: bool
) -> Translated:
    chat = message.chat
    if staff_chat_id is not None and chat.id == staff_chat_id:
        if edited:
            return Ignored("edits in the staff group are not acted on")
        return _staff_post(message)
    if chat.type != Chat.PRIVATE:
        return Ignored(f"message in a {chat.type} chat that is not the staff group")
    user = message.from_user
    if user is None or user.is_bot:
        return Ignored("private message without a human sender")
    if user.id in staff_ids:
        if edited:
            return Ignored("edits by staff are not acted on")
        return _staff_post(message, private=True)
    attachments = tuple(a for a in (_attachment(message),) if a is not None)
    text = message.text or message.caption or ""
    key = message_key(chat.id, message.message_id)
    meta: dict[str, object] = {"telegram": {"chat_id": chat.id, "message_id": message.message_id}}
    if user.username:
        meta["telegram"] = {**meta["telegram"], "username": user.username}  # type: ignore[dict-item]
    base = {
        "channel": CHANNEL,
        "address": str(user.id),
        "display_name": user.full_name or None,
        "language": primary_tag(user.language_code),
        "attachments": attachments,
    }
    if edited:
        when = message.edit_date or message.date
        return CustomerUpdate(
            Inbound(
                external_id=f"{key}:edit:{int(when.timestamp())}",
                text=text,
                received_at=_utc(when),
                kind="edit",
                # The edit belongs to the conversation of the message it changes.
                reply_to=(key,),
                meta={**meta, "edit_of": key},
                **base,  # type: ignore[arg-type]
            )
        )
    if not text and not attachments:
        return CustomerUpdate(
            Inbound(
                external_id=key,
                text=f"[unsupported Telegram message: {_content_kind(message)}]",
                received_at=_utc(message.date),
                kind="event",
                meta={**meta, "kind": "unsupported"},
                **base,  # type: ignore[arg-type]
            )
        )
    link: LinkRequest | None = None
    kind = "message"
    if message.text and _command(message.text) == "start":
        # /start opens every private chat; with a payload it comes from a deep link.
        payload = message.text.partition(" ")[2].strip()
        kind = "event"
        meta["kind"] = "start"
        if payload:
            link = LinkRequest(
                "start", str(user.id), payload, user.full_name, primary_tag(user.language_code),
                channel=CHANNEL,
            )
    contact = message.contact
    if contact is not None and contact.user_id == user.id and contact.phone_number:
        # Only the sender's own contact proves a phone number; anyone can share someone else's.
        link = LinkRequest(
            "phone",
            str(user.id),
            contact.phone_number,
            user.full_name,
            primary_tag(user.language_code),
            channel=CHANNEL,
        )
    reply = message.reply_to_message
    return CustomerUpdate(
        Inbound(
            external_id=key,
            text=text,
            received_at=_utc(message.date),
            kind=kind,
            reply_to=(message_key(chat.id, reply.message_id),) if reply is not None else (),
            meta=meta,
            **base,  # type: ignore[arg-type]
        ),
        link,
    )


def _staff_post(message: Message, *, private: bool = False) -> Translated:
    user = message.from_user
    if user is not None and user.is_bot:
        return Ignored("a bot's message in the staff group")  # kefu's own mirrors come back too
    text = message.text or message.caption or ""
    media = _attachment(message) is not None
    if not text and not media:
        return Ignored("service message in the staff group")
    thread = message.message_thread_id if message.is_topic_message and not private else None
    reply = message.reply_to_message
    # In a forum every topic message "replies" to the topic's first message: that is no thread.
    reply_id = reply.message_id if reply is not None and reply.message_id != thread else None
    return StaffPost(
        chat_id=message.chat.id,
        message_id=message.message_id,
        user_id=user.id if user is not None else None,
        user_name=user.full_name if user is not None else "anonymous admin",
        text=text,
        thread_id=thread,
        reply_to_message_id=reply_id,
        has_media=media,
        sent_at=_utc(message.date),
        private=private,
        channel=CHANNEL,
    )


def _membership(change: ChatMemberUpdated) -> Translated:
    if change.chat.type != Chat.PRIVATE:
        return Ignored(f"bot membership changed in {change.chat.type} chat {change.chat.id}")
    status = change.new_chat_member.status
    blocked = status in ("kicked", "left")
    user = change.from_user
    return CustomerUpdate(
        Inbound(
            channel=CHANNEL,
            external_id=f"member:{change.chat.id}:{int(change.date.timestamp())}:{status}",
            address=str(user.id),
            text="blocked the bot" if blocked else "allowed the bot again",
            received_at=_utc(change.date),
            kind="event",
            display_name=user.full_name or None,
            language=primary_tag(user.language_code),
            meta={"kind": "blocked" if blocked else "unblocked", "telegram": {"status": status}},
        )
    )


def survey_data(survey_id: int, score: int) -> str:
    """The callback_data of one survey button."""
    data = f"{SURVEY_PREFIX}:{survey_id}:{score}"
    assert len(data.encode()) <= CALLBACK_DATA_LIMIT, data
    return data


def parse_survey_data(data: str | None) -> tuple[int, int] | None:
    """"survey:17:4" -> (17, 4); None for any other callback data."""
    prefix, _, rest = (data or "").partition(":")
    survey_id, _, score = rest.partition(":")
    if prefix != SURVEY_PREFIX or not survey_id.isdigit() or not score.isdigit():
        return None
    return int(survey_id), int(score)


def _callback(query: CallbackQuery) -> Translated:
    parsed = parse_survey_data(query.data)
    if parsed is None:
        return Ignored(f"callback_query with data kefu does not use: {(query.data or '')[:64]!r}")
    survey_id, score = parsed
    message = query.message
    # An inaccessible message (older than 48 hours) has no keyboard to mark: the press still counts.
    chat_id = message.chat.id if message is not None else None
    message_id = message.message_id if message is not None else None
    return SurveyPress(
        query_id=query.id,
        user_id=str(query.from_user.id),
        survey_id=survey_id,
        score=score,
        chat_id=chat_id,
        message_id=message_id,
        choices=_choices(message, survey_id) if isinstance(message, Message) else (),
        language=primary_tag(query.from_user.language_code),
        channel=CHANNEL,
    )


def deep_link(bot_username: str, token: str) -> str:
    """The t.me link that opens the bot with /start TOKEN, which comes back as a LinkRequest."""
    return f"https://t.me/{bot_username}?start={token}"


def _choices(message: Message, survey_id: int) -> tuple[int, ...]:
    markup = message.reply_markup
    if markup is None:
        return ()
    found = (parse_survey_data(b.callback_data if isinstance(b.callback_data, str) else None)
             for row in markup.inline_keyboard for b in row)
    return tuple(score for sid, score in (f for f in found if f is not None) if sid == survey_id)


def _command(text: str) -> str | None:
    if not text.startswith("/"):
        return None
    word = text[1:].split(maxsplit=1)[0] if len(text) > 1 else ""
    return word.partition("@")[0].lower() or None


def _utc(when: datetime) -> datetime:
    return when if when.tzinfo else when.replace(tzinfo=UTC)


# --- attachments: one reader per content type -----------------------------------------------------


def _photo(m: Message) -> Attachment | None:
    if not m.photo:
        return None
    biggest = m.photo[-1]  # Telegram lists the sizes smallest first
    return Attachment(kind="photo", file_id=biggest.file_id, size=biggest.file_size,
                      mime_type="image/jpeg", caption=m.caption)


def _file(kind: str) -> Callable[[Message], Attachment | None]:
    """The reader of a file-like content type (document, voice, video, audio: the Message
    attribute of that name): its file id, file name where it has one, type, size, caption."""

    def read(m: Message) -> Attachment | None:
        f: Document | Voice | Video | Audio | None = getattr(m, kind)
        if f is None:
            return None
        return Attachment(kind=kind, file_id=f.file_id, name=getattr(f, "file_name", None),
                          mime_type=f.mime_type, size=f.file_size, caption=m.caption)

    return read


def _sticker(m: Message) -> Attachment | None:
    s = m.sticker
    if s is None:
        return None
    return Attachment(kind="sticker", file_id=s.file_id, name=s.emoji, size=s.file_size)


def _location(m: Message) -> Attachment | None:
    loc = m.location
    if loc is None:
        return None
    return Attachment(kind="location", url=f"geo:{loc.latitude},{loc.longitude}")


def _contact(m: Message) -> Attachment | None:
    c = m.contact
    if c is None:
        return None
    name = " ".join(p for p in (c.first_name, c.last_name) if p) or None
    return Attachment(kind="contact", url=f"tel:{c.phone_number}", name=name)


ATTACHMENTS: dict[str, Callable[[Message], Attachment | None]] = {
    "photo": _photo,
    "document": _file("document"),
    "voice": _file("voice"),
    "video": _file("video"),
    "audio": _file("audio"),
    "sticker": _sticker,
    "location": _location,
    "contact": _contact,
}


def _attachment(message: Message) -> Attachment | None:
    for read in ATTACHMENTS.values():
        found = read(message)
        if found is not None:
            return found
    return None


def _content_kind(message: Message) -> str:
    for name in ("poll", "dice", "game", "venue", "video_note", "animation", "story", "invoice"):
        if getattr(message, name, None) is not None:
            return name
    return "empty"


def fallback(raw: dict[str, object], error: str) -> Translated:
    """An update PTB could not parse (a Bot API shape newer than the library): a private message
    is still logged, from the few fields every message has, so nothing a customer said is lost."""
    message = raw.get("message")
    if not isinstance(message, dict):
        return Ignored(f"unparseable update: {error}", untranslatable=True)
    chat = message.get("chat")
    user = message.get("from")
    if not isinstance(chat, dict) or not isinstance(user, dict) or chat.get("type") != "private":
        return Ignored(f"unparseable non-private message: {error}", untranslatable=True)
    chat_id, message_id, user_id = chat.get("id"), message.get("message_id"), user.get("id")
    if not all(isinstance(v, int) for v in (chat_id, message_id, user_id)):
        return Ignored(f"unparseable message without ids: {error}", untranslatable=True)
    text = message.get("text") or message.get("caption")
    date = message.get("date")
    name = " ".join(str(user[k]) for k in ("first_name", "last_name") if user.get(k)) or None
    return CustomerUpdate(
        Inbound(
            channel=CHANNEL,
            external_id=message_key(chat_id, message_id),  # type: ignore[arg-type]
            address=str(user_id),
            text=str(text) if text else "[Telegram message kefu could not read]",
            received_at=(
                datetime.fromtimestamp(date, UTC) if isinstance(date, int) else datetime.now(UTC)
            ),
            kind="message" if text else "event",
            display_name=name,
            language=primary_tag(str(user.get("language_code") or "")),
            meta={
                "telegram": {"chat_id": chat_id, "message_id": message_id},
                "unparsed": error[:300],
            },
        )
    )
