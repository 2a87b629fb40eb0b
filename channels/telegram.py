"""Telegram channel: python-telegram-bot's Bot, wrapped; customers in private chats, staff in a
group.

Inbound, polling: kefu runs its own getUpdates loop rather than PTB's Updater, because the Updater
confirms an update (the next offset) before kefu's handlers have committed it. Here the offset moves
past an update only after the sink (the pipeline) or the staff desk has returned, i.e. committed.
Inbound, webhook: Telegram POSTs to kefu's own HTTP server (channels/telegram_webhook.py); the
answer is 200 only after the commit, so Telegram retries anything not stored.

Outbound: customers get text (split at 4096 characters) and media by file id; the staff group gets
mirrored messages, each conversation in its own forum topic (created on first use). Sends keep to
Telegram's flood limits with sliding windows, so 429s are the exception, not the pacing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import math
import os
import warnings
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from telegram import (
    Bot,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    ReplyParameters,
    Update,
)
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Conflict,
    Forbidden,
    InvalidToken,
    RetryAfter,
    TelegramError,
)

from bot.intents import Intent, Outbound, StaffNotice, Survey, Threaded
from bot.messages import Attachment
from bot.text import redact_id
from channels.base import (
    ChannelError,
    Deferred,
    Misconfigured,
    PermanentError,
    SendResult,
    Sink,
    TransientError,
)
from channels.telegram_limits import TEXT_LIMIT, SlidingWindow, Slot, split_text
from channels.telegram_updates import (
    CHANNEL,
    CustomerUpdate,
    LinkRequest,
    PressAnswer,
    StaffPost,
    SurveyPress,
    Translated,
    fallback,
    message_key,
    survey_data,
    translate,
)

log = logging.getLogger("kefu.telegram")

# PTB 22 reads durations (RetryAfter.retry_after, inside its own constructor) as ints and warns that
# they become timedeltas; opting in to the timedelta form now silences that and is what v23 does.
os.environ.setdefault("PTB_TIMEDELTA", "true")

ALLOWED_UPDATES = ("message", "edited_message", "my_chat_member", "callback_query")
# answerCallbackQuery shows at most 200 characters.
CALLBACK_TEXT_LIMIT = 200
TOPIC_NAME_LIMIT = 128
SECRET_HEADER = "x-telegram-bot-api-secret-token"
# How long the list of staff accounts is trusted: someone just added waits this long at most.
STAFF_IDS_TTL = 10.0
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Hooks:
    """What the channel may ask of the rest of kefu; bot/app.py injects storage-backed callables."""

    staff: Callable[[StaffPost], Awaitable[object]] | None = None  # returns after its commit
    link: Callable[[LinkRequest], Awaitable[object]] | None = None
    thread_of: Callable[[int], Awaitable[str | None]] | None = None  # conversation -> topic id
    save_thread: Callable[[int, str], Awaitable[None]] | None = None
    survey: Callable[[SurveyPress], Awaitable[PressAnswer]] | None = (
        None  # returns after its commit
    )
    # Telegram user ids of active staff: their private messages to the bot are staff posts.
    staff_ids: Callable[[], Awaitable[Collection[int]]] | None = None
    # A staff feed post is about to go on the wire: its text as of now, final from here on (it
    # takes messages that arrived while it waited its turn). None: the row is gone.
    take: Callable[[str], Awaitable[Mapping[str, Any] | None]] | None = None


@dataclass(frozen=True, slots=True)
class WebhookReply:
    status: int
    body: dict[str, Any]


@dataclass
class _Progress:
    """Parts of a multi-part send already delivered: a retry continues, it does not start over."""

    sent: int = 0
    first_key: str | None = None
    thread: int | None = None


class TelegramChannel:
    name = CHANNEL
    max_text: int | None = TEXT_LIMIT  # split_text cuts longer text into messages of this size

    def __init__(
        self,
        bot: Bot,
        *,
        staff_chat_id: int | None = None,
        mode: str = "polling",
        poll_timeout: int = 30,
        hooks: Hooks = Hooks(),
        messages_per_second: float = 30.0,
        group_messages_per_minute: float = 20.0,
        chat_messages_per_second: float = 1.0,
        group_window_seconds: float = 60.0,
        max_slot_wait: float = 5.0,
        max_in_flight: int = 8,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        retry_delay: float = 1.0,
        max_retry_delay: float = 30.0,
        webhook_retry_seconds: float = 40.0,
    ) -> None:
        if mode not in ("polling", "webhook"):
            raise ValueError(f"mode has value {mode!r}: use polling or webhook")
        self.bot = bot
        self.staff_chat_id = staff_chat_id
        self.mode = mode
        self.poll_timeout = poll_timeout
        self.hooks = hooks
        self.overall = SlidingWindow.per_second(messages_per_second)
        self.group_rate = group_messages_per_minute
        self.chat_rate = chat_messages_per_second
        self.group_window = group_window_seconds
        self.max_slot_wait = max_slot_wait
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        # Telegram waits about a minute for a webhook answer; stay well inside it.
        self.webhook_retry_seconds = webhook_retry_seconds
        self._stop_pause = asyncio.Event()
        self._staff_ids: frozenset[int] = frozenset()
        self._staff_ids_at = -math.inf
        self._groups: dict[int, SlidingWindow] = {}
        self._chats: dict[int, SlidingWindow] = {}  # private chats: about one message a second
        # Few requests in flight: a slot taken must go on the wire at once. With dozens queued in
        # the HTTP client's pool, sends taken in order leave in bunches and Telegram counts 429s.
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._progress: dict[str, _Progress] = {}
        self._threads: dict[int, int] = {}  # conversation id -> forum topic id
        self._forum: bool | None = None
        self._sink: Sink | None = None
        self._poller: asyncio.Task[None] | None = None
        self._stopping = False
        self._long_polling = False
        self._offset: int | None = None
        self._ready = False
        # With several kefu processes only the elected one polls (bot/leader.py calls
        # start_polling and stop_polling); every process sends.
        self.poll_at_start = True

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self, sink: Sink) -> None:
        self._sink = sink
        self._stopping = False
        self._stop_pause.clear()
        await self._initialize(at_start=True)
        if self.mode == "polling":
            if self.poll_at_start:
                self.start_polling()
        elif self._ready:
            await self._register_webhook()

    async def _initialize(self, *, at_start: bool = False) -> bool:
        try:
            await self.bot.initialize()
        except InvalidToken:
            # PTB's own message repeats the token; ours must not.
            raise Misconfigured(
                "Telegram rejected the bot token: check the value in [telegram] token_env "
                "(a token from @BotFather looks like 123456:ABC...)"
            ) from None
        except TelegramError as exc:
            log.warning(
                "telegram.start.unreachable error=%s: %s",
                type(exc).__name__,
                "will keep trying" if at_start else "retrying",
            )
            return False
        self._ready = True
        log.info("telegram.started bot=@%s mode=%s", self.bot.username, self.mode)
        if self.staff_chat_id is not None:
            await self._detect_forum()
        if self.mode == "polling":
            with contextlib.suppress(TelegramError):
                # getUpdates answers 409 while a webhook is set.
                await self.bot.delete_webhook()
        return True

    async def _detect_forum(self) -> None:
        assert self.staff_chat_id is not None
        try:
            chat = await self.bot.get_chat(self.staff_chat_id)
        except TelegramError as exc:
            log.warning(
                "telegram.staff_chat.unknown chat=%s error=%s: is the bot a member of the group?",
                self.staff_chat_id,
                exc,
            )
            return
        self._forum = bool(chat.is_forum)
        log.info("telegram.staff_chat chat=%s forum=%s", self.staff_chat_id, self._forum)

    async def _register_webhook(self) -> None:
        if not self.webhook_url:
            log.info(
                "telegram.webhook.manual: no [telegram] webhook_url; register kefu's "
                "/telegram/webhook with setWebhook (secret_token included) yourself"
            )
            return
        try:
            await self.bot.set_webhook(
                self.webhook_url, secret_token=self.webhook_secret, allowed_updates=ALLOWED_UPDATES
            )
        except TelegramError as exc:
            log.error("telegram.webhook.register.failure error=%s", exc)

    def start_polling(self) -> None:
        if self.mode == "polling" and self._poller is None:
            self._stopping = False
            self._poller = asyncio.create_task(self._poll(), name="kefu-telegram-poll")

    def _stop_requested(self) -> bool:
        # A call, not the attribute: the polling loop's `while not self._stopping` would have the
        # type checker believe it still False after an await.
        return self._stopping

    async def stop_polling(self) -> None:
        self._stopping = True
        self._stop_pause.set()
        task, self._poller = self._poller, None
        if task is not None:
            if self._long_polling:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
                await asyncio.wait_for(task, timeout=5)
            if self._offset is not None and self._ready:
                # Confirm what was committed, so the next start does not fetch it again.
                with contextlib.suppress(TelegramError, asyncio.TimeoutError):
                    await asyncio.wait_for(self.bot.get_updates(offset=self._offset, timeout=0), 5)

    async def stop(self) -> None:
        await self.stop_polling()
        with contextlib.suppress(TelegramError, RuntimeError):
            await self.bot.shutdown()

    # --- inbound ------------------------------------------------------------------------------

    async def _poll(self) -> None:
        attempts: dict[int, int] = {}
        failures = 0
        while not self._stopping:
            if not self._ready and not await self._initialize():
                await self._pause(min(60.0, self.retry_delay * 2 ** min(failures, 6)))
                failures += 1
                continue
            try:
                self._long_polling = True
                updates = await self._get_updates()
            except asyncio.CancelledError:
                if self._stop_requested():
                    return
                raise
            except (InvalidToken, Conflict, TelegramError) as exc:
                reason = {
                    InvalidToken: "the token was rejected",
                    Conflict: "another getUpdates or a webhook is active for this bot",
                }.get(type(exc), str(exc))
                log.warning("telegram.poll.failure error=%s reason=%s", type(exc).__name__, reason)
                failures += 1
                await self._pause(min(60.0, self.retry_delay * 2 ** min(failures, 6)))
                continue
            finally:
                self._long_polling = False
            failures = 0
            if updates:
                await self._consume(updates, attempts)

    async def _get_updates(self) -> list[Update | _Raw]:
        """getUpdates, parsed one update at a time: PTB's get_updates() fails the whole batch when
        one update does not parse, and that batch would then block the chat for good."""
        kwargs: dict[str, Any] = {"timeout": self.poll_timeout, "allowed_updates": ALLOWED_UPDATES}
        if self._offset is not None:
            kwargs["offset"] = self._offset
        # Lower-case on purpose: Bot API method names are case-insensitive, and PTB warns about
        # do_api_request("getUpdates") because it has its own (batch-parsing) method for it.
        raw = await self.bot.do_api_request(
            "getupdates", api_kwargs=kwargs, read_timeout=self.poll_timeout + 10
        )
        updates: list[Update | _Raw] = []
        for data in raw if isinstance(raw, list) else []:
            try:
                updates.append(Update.de_json(data, self.bot))
            except Exception as exc:  # noqa: BLE001 - see fallback()
                log.error(
                    "telegram.update.unparsed update_id=%s error=%s",
                    data.get("update_id"), type(exc).__name__,
                )
                updates.append(_Raw(int(data.get("update_id", 0)), data, repr(exc)))
        return updates

    async def _consume(self, updates: Sequence[Update | _Raw], attempts: dict[int, int]) -> None:
        """Processes a batch; the offset moves past an update only once it is committed.

        An update that fails (a database locked or down, a network error, anything) is tried again
        without limit, with backoff: skipping it would lose what a customer said. The only updates
        passed over are those that cannot be translated at all, and those are logged as such."""
        try:
            await self._refresh_staff()
        except Exception as exc:  # noqa: BLE001 - the database is down: try the batch again
            log.warning("telegram.staff_ids.failure retry_in=%.1fs error=%s",
                        self.max_retry_delay / 4, type(exc).__name__)
            await self._pause(self.max_retry_delay / 4)
            return
        for chunk in _chunks(updates, self._independent):
            results = await asyncio.gather(
                *(self._process(u) for u in chunk), return_exceptions=True
            )
            for update, result in zip(chunk, results, strict=True):
                if isinstance(result, BaseException):
                    if isinstance(result, asyncio.CancelledError):
                        raise result
                    n = attempts[update.update_id] = attempts.get(update.update_id, 0) + 1
                    delay = self._backoff(n)
                    # The type only: an error's text can carry the message (SQL parameters).
                    log.warning(
                        "telegram.update.failure update_id=%s attempt=%d retry_in=%.1fs error=%s",
                        update.update_id, n, delay, type(result).__name__,
                    )
                    # Stop here: the next getUpdates starts again at this update.
                    await self._pause(delay)
                    return
                attempts.pop(update.update_id, None)
                self._offset = update.update_id + 1

    async def _refresh_staff(self) -> None:
        loop = asyncio.get_running_loop()
        if self.hooks.staff_ids is None or loop.time() - self._staff_ids_at < STAFF_IDS_TTL:
            return
        # Read before any update is translated: a failure here fails the batch like any other.
        self._staff_ids = frozenset(await self.hooks.staff_ids())
        self._staff_ids_at = loop.time()

    def _backoff(self, attempt: int) -> float:
        return min(self.max_retry_delay, self.retry_delay * 2.0 ** min(attempt - 1, 16))

    async def _pause(self, seconds: float) -> None:
        """Sleeps, but not past stop(): a shutdown does not wait out a backoff."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_pause.wait(), seconds)

    def _translate(self, update: Update | _Raw) -> Translated:
        if isinstance(update, _Raw):
            return fallback(update.data, update.error)
        try:
            return translate(update, staff_chat_id=self.staff_chat_id, staff_ids=self._staff_ids)
        except Exception as exc:  # noqa: BLE001 - bad input must not stop the chat
            log.error(
                "telegram.update.malformed update_id=%s error=%s",
                update.update_id, type(exc).__name__,
            )
            return fallback(update.to_dict(), repr(exc))

    def _independent(self, update: Update | _Raw) -> bool:
        """Plain customer messages may commit together; links and staff posts go one at a time."""
        item = self._translate(update)
        return isinstance(item, CustomerUpdate) and item.link is None

    async def _process(self, update: Update | _Raw) -> None:
        item = self._translate(update)
        if isinstance(item, CustomerUpdate):
            if self._sink is None:
                raise RuntimeError("the Telegram channel is not started")
            if item.link is not None and self.hooks.link is not None:
                await self.hooks.link(item.link)
            await self._sink(item.inbound)
        elif isinstance(item, StaffPost):
            if self.hooks.staff is None:
                log.info("telegram.staff.off update_id=%s: no staff desk", update.update_id)
                return
            await self.hooks.staff(item)
        elif isinstance(item, SurveyPress):
            await self._survey_press(item)
        elif item.untranslatable:
            # Nothing in it kefu can read or store: the one kind of update passed over.
            log.warning(
                "telegram.update.skipped update_id=%s reason=%s",
                update.update_id, item.reason.partition(":")[0],  # not the error: it may quote text
            )
        else:
            log.debug(
                "telegram.update.ignored update_id=%s reason=%s", update.update_id, item.reason
            )

    async def _survey_press(self, press: SurveyPress) -> None:
        """Records a survey button press (the hook commits), then tells the customer. The answer to
        Telegram comes after the commit and never fails the update: a lost toast is only cosmetic,
        while a retried press would be refused as answered already."""
        answer: PressAnswer | None = None
        if self.hooks.survey is None:
            log.info("telegram.survey.off survey=%s: no survey handler", press.survey_id)
        else:
            answer = await self.hooks.survey(press)
        try:
            await self.bot.answer_callback_query(
                press.query_id, text=answer.text[:CALLBACK_TEXT_LIMIT] if answer else None
            )
        except TelegramError as exc:
            # "query is too old": Telegram waits only seconds for the answer (a retried update).
            log.warning("telegram.callback.answer.failure survey=%s error=%s", press.survey_id, exc)
        if answer is not None and answer.chosen is not None:
            await self._mark_choice(press, answer.chosen)

    async def _mark_choice(self, press: SurveyPress, chosen: int) -> None:
        if press.chat_id is None or press.message_id is None or not press.choices:
            return
        chat_id, message_id = press.chat_id, press.message_id
        markup = survey_keyboard(press.survey_id, press.choices, chosen=chosen)
        try:
            await self._call(
                chat_id,
                lambda: self.bot.edit_message_reply_markup(
                    chat_id, message_id, reply_markup=markup
                ),
                group=False,
            )
        except ChannelError as exc:
            # "message is not modified" (marked already) or a message too old to edit.
            log.info("telegram.survey.mark.failure survey=%s error=%s", press.survey_id, exc)

    def webhook_gate(self, headers: Mapping[str, str]) -> WebhookReply | None:
        """The answer for a POST that must not be read at all (mode off, secret token wrong)."""
        if self.mode != "webhook":
            return WebhookReply(404, {"error": "off", "message": "Telegram webhook mode is off"})
        given = headers.get(SECRET_HEADER) or ""
        if not self.webhook_secret or not hmac.compare_digest(
            given.encode("utf-8", "surrogateescape"), self.webhook_secret.encode()
        ):
            log.warning("telegram.webhook.rejected reason=secret token missing or wrong")
            return WebhookReply(403, {"error": "bad_secret", "message": "secret token mismatch"})
        return None

    async def handle_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookReply:
        """One Telegram webhook POST; 200 only after the update is committed."""
        refused = self.webhook_gate(headers)
        if refused is not None:
            return refused
        try:
            data = json.loads(body)
            if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
                raise ValueError("not a Telegram Update object")
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            log.warning("telegram.webhook.malformed error=%s", exc)
            return WebhookReply(400, {"error": "malformed", "message": str(exc)[:200]})
        update: Update | _Raw
        try:
            update = Update.de_json(data, self.bot)
        except Exception as exc:  # noqa: BLE001 - a shape newer than PTB: see fallback()
            log.error(
                "telegram.update.unparsed update_id=%s error=%s",
                data["update_id"], type(exc).__name__,
            )
            update = _Raw(data["update_id"], data, repr(exc))
        # A brief outage (a locked or restarting database) is ridden out here, with backoff, so
        # Telegram's own redelivery (it gives up after a while) is the last resort, not the first.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.webhook_retry_seconds
        attempt = 0
        while True:
            try:
                await self._refresh_staff()
                await self._process(update)
                return WebhookReply(200, {"ok": True})
            except Exception as exc:  # noqa: BLE001 - Telegram retries a non-2xx answer
                attempt += 1
                delay = self._backoff(attempt)
                log.warning(
                    "telegram.update.failure update_id=%s attempt=%d retry_in=%.1fs error=%s",
                    update.update_id, attempt, delay, type(exc).__name__,
                )
                if self._stopping or loop.time() + delay > deadline:
                    return WebhookReply(
                        503, {"error": "unavailable", "message": "not stored yet; send it again"}
                    )
                await self._pause(delay)

    # --- outbound -----------------------------------------------------------------------------

    async def send(self, out: Outbound) -> SendResult:
        """Renders the intent: a StaffNotice to the staff group (in its conversation's topic) or to
        an agent's private chat; anything else to the customer's chat, as a reply to the message it
        answers, with a Survey's choices as an inline keyboard."""
        try:
            chat_id = int(out.address)
        except ValueError:
            raise PermanentError(f"Telegram address {out.address!r} is not a chat id") from None
        notice = out.intent if isinstance(out.intent, StaffNotice) else None
        if notice is not None and (chat_id == self.staff_chat_id or notice.agent):
            out = await self._taken(out)
            notice = out.intent if isinstance(out.intent, StaffNotice) else notice
        if chat_id == self.staff_chat_id:
            return await self._send_staff(out, chat_id, notice or _as_staff(out.intent))
        if notice is not None and notice.agent:
            return await self._send_agent(out, chat_id, notice)
        return await self._send_customer(out, chat_id)

    async def _taken(self, out: Outbound) -> Outbound:
        """The post with what was merged into it while it waited; once a part of it is on the
        wire it stays as it was (a retry continues it)."""
        if self.hooks.take is None or out.dedupe_key in self._progress:
            return out
        try:
            payload = await self.hooks.take(out.dedupe_key)
        except Exception as exc:  # the database is briefly away: try later
            raise TransientError(
                f"cannot read the post before sending: {type(exc).__name__}"
            ) from exc
        if payload is None:
            log.warning("telegram.staff.take.missing key=%s: sent as claimed", out.dedupe_key)
            return out
        return Outbound.from_row(out.channel, out.address, out.dedupe_key, dict(payload))

    async def _send_agent(self, out: Outbound, chat_id: int, notice: StaffNotice) -> SendResult:
        """A staff post in an agent's private chat with the bot, where they answer by replying.
        An agent who never opened that chat (/start) or blocked the bot cannot get it there: a
        post with a fallback (the staff group) then goes there, so nothing waits on them."""
        steps = self._steps(
            chat_id, out.text, out.attachments, thread=None,
            reply_to=_reply_to(_last(notice.answers), chat_id),
        )
        try:
            progress = await self._run(out.dedupe_key, chat_id, steps, group=False)
        except PermanentError as exc:
            group = _int(notice.fallback)
            if group is None or group != self.staff_chat_id:
                raise
            log.warning(
                "telegram.agent_chat.unreachable agent=%s error=%s: posting in the staff group",
                notice.agent, exc,
            )
            self._progress.pop(out.dedupe_key, None)
            in_group = dataclasses.replace(notice, agent=None, fallback=None)
            return await self._send_staff(out.with_intent(in_group, address=str(group)), group,
                                          in_group)
        return SendResult(external_id=progress.first_key)

    async def _send_customer(self, out: Outbound, chat_id: int) -> SendResult:
        intent = out.intent
        text = _with_links(out.text, out.attachments)
        answered = intent.answered if isinstance(intent, Threaded) else None
        markup = (
            survey_keyboard(intent.survey_id, intent.choices)
            if isinstance(intent, Survey) and intent.choices
            else None
        )
        steps = self._steps(
            chat_id, text, out.attachments, thread=None, reply_to=_reply_to(answered, chat_id),
            markup=markup,
        )
        progress = await self._run(out.dedupe_key, chat_id, steps, group=False)
        return SendResult(external_id=progress.first_key)

    async def _send_staff(self, out: Outbound, chat_id: int, notice: StaffNotice) -> SendResult:
        forum = await self._is_forum()
        thread: int | None = None
        if forum:
            thread = _int(notice.place)
            if thread is None and out.conversation_id is not None:
                thread = await self._thread_for(out.conversation_id, chat_id, notice)
        steps = self._steps(
            chat_id, out.text, out.attachments, thread=thread,
            reply_to=_reply_to(_last(notice.answers), chat_id),
        )
        progress = await self._run(out.dedupe_key, chat_id, steps, group=True)
        return SendResult(
            external_id=progress.first_key, place=str(thread) if thread is not None else None
        )

    async def _is_forum(self) -> bool:
        if self._forum is None:
            await self._detect_forum()
        if self._forum is None:
            raise TransientError("cannot tell whether the staff group has topics (getChat failed)")
        return self._forum

    async def _thread_for(
        self, conversation_id: int, chat_id: int, notice: StaffNotice
    ) -> int | None:
        """The conversation's forum topic: known, or opened now for a post that names one."""
        known = self._threads.get(conversation_id)
        if known is None and self.hooks.thread_of is not None:
            known = _int(await self.hooks.thread_of(conversation_id))
        if known is not None or notice.topic is None:
            if known is not None:
                self._threads[conversation_id] = known
            return known
        name = (notice.topic or f"#{conversation_id}")[:TOPIC_NAME_LIMIT]
        topic = await self._call(
            chat_id, lambda: self.bot.create_forum_topic(chat_id, name), group=True
        )
        thread = topic.message_thread_id
        self._threads[conversation_id] = thread
        log.info("telegram.topic.created conversation=%s thread=%s", conversation_id, thread)
        if self.hooks.save_thread is not None:
            try:
                await self.hooks.save_thread(conversation_id, str(thread))
            except Exception as exc:  # noqa: BLE001 - the outbox stores it with the result too
                log.warning(
                    "telegram.topic.save.failure conversation=%s error=%r", conversation_id, exc
                )
        return thread

    def _steps(
        self,
        chat_id: int,
        text: str,
        attachments: Sequence[Attachment],
        *,
        thread: int | None,
        reply_to: int | None,
        markup: InlineKeyboardMarkup | None = None,
    ) -> list[Callable[[], Awaitable[Message]]]:
        common: dict[str, Any] = {}
        if thread is not None:
            common["message_thread_id"] = thread
        steps: list[Callable[[], Awaitable[Message]]] = []
        parts = split_text(text) if text.strip() else []
        for n, part in enumerate(parts):
            extra = dict(common)
            if n == 0 and reply_to is not None:
                extra["reply_parameters"] = ReplyParameters(
                    reply_to, allow_sending_without_reply=True
                )
            if n == len(parts) - 1 and markup is not None:
                # Buttons under the last part: the customer reads the question, then answers.
                extra["reply_markup"] = markup
            steps.append(_bound(self.bot.send_message, chat_id, part, **extra))
        for attachment in attachments:
            if attachment.file_id:
                steps.append(_media(self.bot, chat_id, attachment, attachment.file_id, common))
        if not steps:
            raise PermanentError("nothing to send: the message has no text and no Telegram media")
        return steps

    async def _run(
        self,
        key: str,
        chat_id: int,
        steps: Sequence[Callable[[], Awaitable[Message]]],
        *,
        group: bool,
    ) -> _Progress:
        progress = self._progress.setdefault(key, _Progress())
        for step in steps[progress.sent :]:
            message = await self._call(chat_id, step, group=group)
            if progress.first_key is None:
                progress.first_key = message_key(chat_id, message.message_id)
            progress.sent += 1
        del self._progress[key]
        return progress

    async def _call(
        self, chat_id: int, step: Callable[[], Awaitable[_T]], *, group: bool
    ) -> _T:
        """One Bot API call within the flood limits: the chat's slot, then a wire, then a global
        slot. A chat slot too far away is a Deferred: the outbox row waits its turn without
        counting an attempt, so a post behind the group's 20 a minute never runs out of tries."""
        held: list[tuple[SlidingWindow, Slot]] = []
        try:
            window = self._window(chat_id, group=group)
            held.append((window, await window.acquire(max_wait=self.max_slot_wait)))
            async with self._in_flight:
                held.append((self.overall, await self.overall.acquire()))
                try:
                    return await step()
                except TelegramError as exc:
                    raise self._mapped(exc, chat_id, group=group) from exc
        finally:
            for window, slot in held:
                window.done(slot)

    def _window(self, chat_id: int, *, group: bool) -> SlidingWindow:
        windows = self._groups if group else self._chats
        window = windows.get(chat_id)
        if window is None:
            window = windows[chat_id] = (
                SlidingWindow.per_minute(self.group_rate, minute=self.group_window)
                if group
                else SlidingWindow.per_second(self.chat_rate)
            )
            if len(self._chats) > 10_000:
                self._forget_idle_chats()
        return window

    def _forget_idle_chats(self) -> None:
        """One window per private chat ever written to would grow without end; an idle one holds
        nothing (every slot older than its window), so it can go."""
        for chat_id, window in list(self._chats.items()):
            if window.idle():
                del self._chats[chat_id]

    def _mapped(self, exc: TelegramError, chat_id: int, *, group: bool) -> ChannelError:
        detail = f"{type(exc).__name__}: {exc.message}"
        if isinstance(exc, RetryAfter):
            seconds = _retry_seconds(exc)
            # A group's 429 is its 20 a minute; a private chat's may be that chat's or the 30 a
            # second overall, which Telegram does not tell apart: pause both.
            paused = (
                [self._groups.get(chat_id)] if group else [self._chats.get(chat_id), self.overall]
            )
            for window in paused:
                if window is not None:
                    window.push_back(seconds)
            shown = chat_id if group else redact_id(chat_id)  # a private chat is a person
            log.warning("telegram.send.flood chat=%s retry_after=%.0fs", shown, seconds)
            # Telegram's own "wait your turn": not a failed attempt.
            return Deferred(detail, retry_after=seconds)
        if isinstance(exc, Forbidden):
            gone = any(w in exc.message.lower() for w in ("blocked", "deactivated"))
            return PermanentError(detail, unreachable=gone and not group)
        if isinstance(exc, ChatMigrated):
            return PermanentError(
                f"{detail} (the group is now chat {exc.new_chat_id}: update config)"
            )
        if isinstance(exc, BadRequest):
            return PermanentError(detail)
        if isinstance(exc, InvalidToken):
            return TransientError("InvalidToken: Telegram rejected the bot token")
        return TransientError(detail)  # TimedOut, NetworkError, Conflict, the unforeseen


@dataclass(frozen=True, slots=True)
class _Raw:
    """An update PTB could not parse, kept as JSON."""

    update_id: int
    data: dict[str, Any]
    error: str


def _chunks(
    updates: Sequence[Update | _Raw], independent: Callable[[Update | _Raw], bool]
) -> list[list[Update | _Raw]]:
    chunks: list[list[Update | _Raw]] = []
    for update in updates:
        if independent(update) and chunks and independent(chunks[-1][-1]):
            chunks[-1].append(update)
        else:
            chunks.append([update])
    return chunks


def _bound(
    method: Callable[..., Awaitable[Message]], *args: Any, **kwargs: Any
) -> Callable[[], Awaitable[Message]]:
    return lambda: method(*args, **kwargs)


def _media(
    bot: Bot, chat_id: int, attachment: Attachment, file_id: str, common: Mapping[str, Any]
) -> Callable[[], Awaitable[Message]]:
    caption = (attachment.caption or "")[:1024] or None
    senders: dict[str, Callable[..., Awaitable[Message]]] = {
        "photo": lambda: bot.send_photo(chat_id, file_id, caption=caption, **common),
        "voice": lambda: bot.send_voice(chat_id, file_id, caption=caption, **common),
        "video": lambda: bot.send_video(chat_id, file_id, caption=caption, **common),
        "sticker": lambda: bot.send_sticker(chat_id, file_id, **common),
    }
    return senders.get(
        attachment.kind,
        lambda: bot.send_document(chat_id, file_id, caption=caption, **common),
    )


def survey_keyboard(
    survey_id: int, choices: Sequence[int], *, chosen: int | None = None
) -> InlineKeyboardMarkup:
    """One row, one button per score; after an answer the chosen one is ticked."""
    return InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton(
                    f"✅ {n}" if n == chosen else str(n), callback_data=survey_data(survey_id, n)
                )
                for n in choices
            ]
        ]
    )


def _with_links(text: str, attachments: Sequence[Attachment]) -> str:
    """Attachments from other channels have URLs, not Telegram file ids: they travel as links."""
    links = [a.url for a in attachments if a.url and not a.file_id]
    return "\n".join([text, *links]) if links else text


def _as_staff(intent: Intent) -> StaffNotice:
    """Any other intent addressed to the staff group is posted there as it is."""
    return StaffNotice(
        text=intent.text,
        language=intent.language,
        conversation_id=intent.conversation_id,
        customer_id=intent.customer_id,
        attachments=intent.attachments,
    )


def _last(answers: Sequence[str]) -> str | None:
    return answers[-1] if answers else None


def _reply_to(external_id: object, chat_id: int) -> int | None:
    """The message id of a "chat:message" id, when that message is in this chat."""
    if not isinstance(external_id, str):
        return None
    chat, _, message_id = external_id.rpartition(":")
    return int(message_id) if chat == str(chat_id) and message_id.isdigit() else None


def _int(value: object) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return None


def _retry_seconds(exc: RetryAfter) -> float:
    # PTB 22 warns when retry_after is read as an int; the value is the same either way.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def make_bot(token: str, base_url: str | None = None) -> Bot:
    """PTB's Bot for Telegram, or for a self-hosted Bot API server at base_url (".../bot")."""
    # Imported here: telegram.request pulls in httpx machinery only this constructor needs.
    from telegram.request import HTTPXRequest

    kwargs: dict[str, Any] = {}
    if base_url:
        kwargs["base_url"] = base_url
        root, _, _ = base_url.rstrip("/").rpartition("/")
        kwargs["base_file_url"] = f"{root}/file/bot"
    return Bot(
        token,
        # Sends run concurrently (the outbox sends many chats at once); each waits for a pooled
        # connection instead of failing after PTB's default one second.
        request=HTTPXRequest(connection_pool_size=64, pool_timeout=30.0, read_timeout=20.0),
        get_updates_request=HTTPXRequest(connection_pool_size=2, read_timeout=10.0),
        **kwargs,
    )
