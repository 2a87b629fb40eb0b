"""A Telegram Bot API stand-in over HTTP (aiohttp), for python-telegram-bot pointed at it by
base_url.

Requests arrive as POST /bot<TOKEN>/<method> with form-encoded bodies (non-string values
JSON-encoded). Answers are real Bot API shapes: {"ok": true, "result": ...} or {"ok": false,
"error_code", "description", "parameters"?}. It keeps a queue of updates for getUpdates (offset and
long-poll timeout honoured), records every send, creates forum topics, answers callback queries
(each pushed one once, as Telegram does) and edits inline keyboards, and can fail on purpose:
429 with retry_after (scripted, or by enforcing Telegram's flood limits: 30/s overall, 20/min
per group, 1/s per private chat), 403 for a blocked user. As Telegram, it answers 409 Conflict to a
getUpdates that arrives while another is still open (two pollers for one bot), and counts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.servers.ports import free_port

FIXTURES = Path(__file__).parent.parent / "fixtures" / "telegram"
TOKEN = "7000000001:AAHkefu-test-token_0123456789abcdefXYZ"
BOT_USER = {"id": 7000000001, "is_bot": True, "first_name": "Kefu", "username": "kefu_test_bot"}
SEND_METHODS = {"sendmessage", "sendphoto", "senddocument", "sendvoice", "sendvideo", "sendsticker"}
# Form fields PTB JSON-encodes; the rest (text, caption, file ids) are plain strings.
JSON_FIELDS = {
    "chat_id", "message_thread_id", "offset", "timeout", "limit", "allowed_updates",
    "reply_parameters", "icon_color", "drop_pending_updates", "max_connections",
    "reply_markup", "message_id", "show_alert", "cache_time",
}
QUERY_INVALID = "Bad Request: query is too old and response timeout expired or query ID is invalid"


def fixture(name: str, substitute: dict[Any, Any] | None = None) -> dict[str, Any]:
    """A stored Bot API update; `substitute` swaps values anywhere in it (ids, texts)."""
    data = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    return _swap(data, substitute or {})


def _swap(value: Any, table: dict[Any, Any]) -> Any:
    if isinstance(value, dict):
        return {k: _swap(v, table) for k, v in value.items()}
    if isinstance(value, list):
        return [_swap(v, table) for v in value]
    if not isinstance(value, bool) and value in table:
        return table[value]
    return value


@dataclass
class Sent:
    method: str
    chat_id: int
    message_id: int
    text: str | None
    thread_id: int | None
    reply_to: int | None
    data: dict[str, Any]
    at: float


@dataclass
class Failure:
    status: int
    description: str
    retry_after: int | None = None
    method: str | None = None  # lowercase; None = any send
    chat_id: int | None = None
    after: int = 0  # let this many matching sends through first


@dataclass
class BotApiServer:
    token: str = TOKEN
    forum_chats: set[int] = field(default_factory=set)
    group_chats: set[int] = field(default_factory=set)
    # Flood limits to enforce (None: off): sends per second overall, per minute into one group
    # (`group_window` shortens the minute for tests), per second into one private chat.
    rate_per_second: float | None = None
    group_per_minute: float | None = None
    group_window: float = 60.0
    chat_per_second: float | None = None
    port: int = field(default_factory=free_port)
    latency: float = 0.0
    updates_per_poll: int = 100  # getUpdates' default limit

    def __post_init__(self) -> None:
        self.updates: list[dict[str, Any]] = []
        self.confirmed = 0  # every update_id below this was confirmed by an offset
        self.offsets: list[int | None] = []
        self.sent: list[Sent] = []
        self.topics: dict[int, list[tuple[int, str]]] = {}
        self.blocked: set[int] = set()
        self.failures: list[Failure] = []
        self.calls: Counter[str] = Counter()
        self.too_many = 0
        self.conflicts = 0  # getUpdates refused with 409 because another one was open
        self._polling = 0
        self.webhook: dict[str, Any] | None = None
        self.allowed_updates: list[
            str
        ] = []  # as Telegram: kept from the last getUpdates that set it
        self.open_queries: set[str] = set()  # callback queries pushed and not answered yet
        self.callback_answers: list[dict[str, Any]] = []
        self.edits: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._update_ids = itertools.count(500_000_001)
        self._arrived = asyncio.Event()
        self._overall: deque[float] = deque()
        self._groups: dict[int, deque[float]] = {}
        self._chats: dict[int, deque[float]] = {}
        self.on_send: Callable[[Sent], None] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    # --- what tests do ------------------------------------------------------------------------

    def push(self, update: dict[str, Any]) -> int:
        update = copy.deepcopy(update)
        update["update_id"] = next(self._update_ids)
        if "callback_query" in update:
            self.open_queries.add(str(update["callback_query"]["id"]))
        self.updates.append(update)
        self._arrived.set()
        return int(update["update_id"])

    def pending(self) -> int:
        return sum(1 for u in self.updates if u["update_id"] >= self.confirmed)

    def fail_next(
        self,
        status: int,
        description: str,
        *,
        retry_after: int | None = None,
        method: str | None = None,
        chat_id: int | None = None,
        times: int = 1,
        after: int = 0,
    ) -> None:
        for _ in range(times):
            self.failures.append(
                Failure(status, description, retry_after, method.lower() if method else None,
                        chat_id, after)
            )

    def to(self, chat_id: int) -> list[Sent]:
        return [s for s in self.sent if s.chat_id == chat_id]

    async def wait_for(
        self, predicate: Callable[[BotApiServer], bool], timeout: float = 10.0, what: str = ""
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out waiting for {what or predicate}; sent={self.sent!r}"
                )
            await asyncio.sleep(0.02)

    # --- the HTTP side ------------------------------------------------------------------------

    async def __aenter__(self) -> BotApiServer:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.match_info["method"].lower()
        self.calls[method] += 1
        form = await request.post()
        data: dict[str, Any] = {}
        for key, value in form.items():
            if not isinstance(value, str):
                continue  # uploads: kefu sends by file id only
            data[key] = json.loads(value) if key in JSON_FIELDS else value
        if self.latency:
            await asyncio.sleep(self.latency)
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            return _error(404, "Not Found: method not found")
        try:
            result = await handler(data)
        except _ApiError as exc:
            return exc.response
        return web.json_response({"ok": True, "result": result})

    async def _m_getme(self, data: dict[str, Any]) -> Any:
        return {**BOT_USER, "can_join_groups": True, "can_read_all_group_messages": False,
                "supports_inline_queries": False}

    async def _m_deletewebhook(self, data: dict[str, Any]) -> Any:
        self.webhook = None
        return True

    async def _m_setwebhook(self, data: dict[str, Any]) -> Any:
        self.webhook = data
        return True

    async def _m_getchat(self, data: dict[str, Any]) -> Any:
        chat_id = int(data["chat_id"])
        return {**self._chat(chat_id), "accent_color_id": 0, "max_reaction_count": 11,
                "accepted_gift_types": {"unlimited_gifts": False, "limited_gifts": False,
                                        "unique_gifts": False, "premium_subscription": False,
                                        "gifts_from_channels": False}}

    async def _m_getupdates(self, data: dict[str, Any]) -> Any:
        if self._polling:
            self.conflicts += 1
            raise _ApiError(_error(409, "Conflict: terminated by other getUpdates request; make "
                                        "sure that only one bot instance is running"))
        self._polling += 1
        try:
            return await self._get_updates(data)
        finally:
            self._polling -= 1

    async def _get_updates(self, data: dict[str, Any]) -> Any:
        offset = data.get("offset")
        self.offsets.append(offset)
        if offset is not None:
            self.confirmed = max(self.confirmed, int(offset))
        if data.get("allowed_updates") is not None:
            self.allowed_updates = list(data["allowed_updates"])
        deadline = time.monotonic() + float(data.get("timeout") or 0)
        limit = int(data.get("limit") or self.updates_per_poll)
        while True:
            ready = [
                u for u in self.updates if u["update_id"] >= self.confirmed and self._allowed(u)
            ][:limit]
            if ready or time.monotonic() >= deadline:
                return ready
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), deadline - time.monotonic())

    def _allowed(self, update: dict[str, Any]) -> bool:
        """Telegram withholds update types the bot did not ask for (an empty list: the usual
        ones)."""
        kind = next(k for k in update if k != "update_id")
        return not self.allowed_updates or kind in self.allowed_updates

    async def _m_getfile(self, data: dict[str, Any]) -> Any:
        file_id = str(data["file_id"])
        return {"file_id": file_id, "file_unique_id": f"u-{file_id[-8:]}", "file_size": 1234,
                "file_path": f"documents/{file_id[-8:]}.bin"}

    async def _m_createforumtopic(self, data: dict[str, Any]) -> Any:
        chat_id = int(data["chat_id"])
        self._check_send("createforumtopic", chat_id)
        if chat_id not in self.forum_chats:
            raise _ApiError(_error(400, "Bad Request: the chat is not a forum"))
        thread_id = next(self._ids)
        self.topics.setdefault(chat_id, []).append((thread_id, str(data["name"])))
        return {"message_thread_id": thread_id, "name": data["name"], "icon_color": 7322096}

    async def _m_sendmessage(self, data: dict[str, Any]) -> Any:
        return self._send("sendmessage", data, {"text": data.get("text", "")})

    async def _m_sendphoto(self, data: dict[str, Any]) -> Any:
        photo = {"file_id": data["photo"], "file_unique_id": "p", "width": 1, "height": 1}
        return self._send("sendphoto", data, {"photo": [photo], **_caption(data)})

    async def _m_senddocument(self, data: dict[str, Any]) -> Any:
        return self._send(
            "senddocument",
            data,
            {"document": {"file_id": data["document"], "file_unique_id": "d"}, **_caption(data)},
        )

    async def _m_sendvoice(self, data: dict[str, Any]) -> Any:
        return self._send(
            "sendvoice",
            data,
            {
                "voice": {"file_id": data["voice"], "file_unique_id": "v", "duration": 1},
                **_caption(data),
            },
        )

    async def _m_sendvideo(self, data: dict[str, Any]) -> Any:
        video = {
            "file_id": data["video"],
            "file_unique_id": "w",
            "width": 1,
            "height": 1,
            "duration": 1,
        }
        return self._send("sendvideo", data, {"video": video, **_caption(data)})

    async def _m_answercallbackquery(self, data: dict[str, Any]) -> Any:
        query_id = str(data["callback_query_id"])
        if query_id not in self.open_queries:
            raise _ApiError(_error(400, QUERY_INVALID))
        self.open_queries.discard(query_id)
        self.callback_answers.append(data)
        return True

    async def _m_editmessagereplymarkup(self, data: dict[str, Any]) -> Any:
        chat_id, message_id = int(data["chat_id"]), int(data["message_id"])
        self._check_send("editmessagereplymarkup", chat_id)
        sent = next(
            (s for s in self.sent if (s.chat_id, s.message_id) == (chat_id, message_id)), None
        )
        if sent is None:
            raise _ApiError(_error(400, "Bad Request: message to edit not found"))
        markup = data.get("reply_markup")
        if markup == sent.data.get("reply_markup"):
            raise _ApiError(
                _error(
                    400,
                    "Bad Request: message is not modified: specified new message "
                    "content and reply markup are exactly the same",
                )
            )
        sent.data["reply_markup"] = markup
        self.edits.append(data)
        message: dict[str, Any] = {
            "message_id": message_id,
            "from": BOT_USER,
            "date": int(time.time()),
            "chat": self._chat(chat_id),
            "text": sent.text or "",
        }
        if markup:
            message["reply_markup"] = markup
        return message

    # --- sends --------------------------------------------------------------------------------

    def _check_send(self, method: str, chat_id: int) -> None:
        for n, failure in enumerate(self.failures):
            if failure.method not in (None, method) or failure.chat_id not in (None, chat_id):
                continue
            if failure.after > 0:
                failure.after -= 1
                break
            del self.failures[n]
            if failure.status == 429:
                self.too_many += 1
            raise _ApiError(_error(failure.status, failure.description, failure.retry_after))
        if chat_id in self.blocked:
            raise _ApiError(_error(403, "Forbidden: bot was blocked by the user"))
        now = time.monotonic()
        if self.rate_per_second is not None:
            window = _trim(self._overall, now, 1.0)
            if len(window) >= self.rate_per_second:
                self.too_many += 1
                raise _ApiError(_error(429, "Too Many Requests: retry after 1", 1))
        if self.group_per_minute is not None and chat_id < 0:
            window = _trim(self._groups.setdefault(chat_id, deque()), now, self.group_window)
            if len(window) >= self.group_per_minute:
                self.too_many += 1
                wait = int(window[0] + self.group_window - now) + 1
                raise _ApiError(_error(429, f"Too Many Requests: retry after {wait}", wait))
        if self.chat_per_second is not None and chat_id > 0:
            window = _trim(self._chats.setdefault(chat_id, deque()), now, 1.0)
            if len(window) >= self.chat_per_second:
                self.too_many += 1
                raise _ApiError(_error(429, "Too Many Requests: retry after 1", 1))
        self._overall.append(now)
        if chat_id < 0:
            self._groups.setdefault(chat_id, deque()).append(now)
        else:
            self._chats.setdefault(chat_id, deque()).append(now)

    def _send(self, method: str, data: dict[str, Any], content: dict[str, Any]) -> Any:
        chat_id = int(data["chat_id"])
        self._check_send(method, chat_id)
        thread = data.get("message_thread_id")
        reply = (data.get("reply_parameters") or {}).get("message_id")
        message_id = next(self._ids)
        sent = Sent(method, chat_id, message_id, data.get("text") or data.get("caption"),
                    int(thread) if thread is not None else None, reply, data, time.monotonic())
        self.sent.append(sent)
        if self.on_send is not None:
            self.on_send(sent)
        message: dict[str, Any] = {
            "message_id": message_id,
            "from": BOT_USER,
            "date": int(time.time()),
            "chat": self._chat(chat_id),
            **content,
        }
        if thread is not None:
            message.update(message_thread_id=int(thread), is_topic_message=True)
        return message

    def _chat(self, chat_id: int) -> dict[str, Any]:
        if chat_id > 0:
            return {"id": chat_id, "type": "private", "first_name": f"user{chat_id}"}
        return {"id": chat_id, "type": "supergroup", "title": "Support staff",
                **({"is_forum": True} if chat_id in self.forum_chats else {})}


class _ApiError(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


def _error(status: int, description: str, retry_after: int | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return web.json_response(body, status=status)


def _caption(data: dict[str, Any]) -> dict[str, Any]:
    return {"caption": data["caption"]} if data.get("caption") else {}


def _trim(window: deque[float], now: float, span: float) -> deque[float]:
    while window and window[0] <= now - span:
        window.popleft()
    return window
