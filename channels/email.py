"""Email channel: IMAP in (IDLE, else polling), SMTP out, through the pipeline and the outbox.

Receiving: each folder keeps a checkpoint (UIDVALIDITY, last UID) through injected load/save
callables; a message is flagged \\Seen (or moved) only after the pipeline committed it. A changed
UIDVALIDITY means a rescan (RFC 3501 2.3.1.1); the pipeline's (channel, Message-ID) dedupe keeps it
from logging anything twice. Any failure -> reconnect with backoff; nothing is acknowledged early,
so nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import logging.handlers
import multiprocessing
import os
import pickle
import re
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiosmtplib
from aioimaplib import (
    IMAP4,
    STOP_WAIT_SERVER_PUSH,
    AioImapException,
    Command,
    IMAP4ClientProtocol,
    Response,
)

from bot.intents import Outbound
from bot.messages import Attachment, Inbound, Receipt
from bot.text import redact_addresses
from channels.base import PermanentError, SendResult, Sink, TransientError
from channels.mail_auth import AuthSettings, authenticate
from channels.mail_compose import Composer, title_of
from channels.mail_compose import Identity as Sender
from channels.mail_parse import (
    UNKNOWN_SENDER,
    MailSystemError,
    MalformedMail,
    ParsedMail,
    Part,
    conversation_token,
    parse_message,
    reply_ids,
    synthetic_msgid,
)

log = logging.getLogger("kefu.email")

CHANNEL = "email"
Security = Literal["tls", "starttls", "none"]
LoadState = Callable[[str], Awaitable[dict[str, Any] | None]]
SaveState = Callable[[str, dict[str, Any]], Awaitable[None]]
T = TypeVar("T")

FETCH_CHUNK = 200
# Mail above this size is parsed in a worker process: compat32 parsing and HTML conversion hold
# the GIL, so a thread stalled the loop for 0.2-1.5 s on a 5 MB mail. Smaller mail stays in a
# thread (pickling it to a process costs more than parsing it).
PROCESS_PARSE_BYTES = 256 * 1024
PARSE_WORKERS = 2
# A fetch of this many messages or more is parsed in the worker processes, PARSE_RUN messages to a
# job, and each run goes to the pipeline as soon as it is parsed: the loop commits one run while
# the workers parse the next (in one thread, parsing and committing took turns on one core and
# held up 1,000 mails for 2-3 s). One job per mail cost more in pickling than the parse saved.
PROCESS_PARSE_COUNT = 16
PARSE_RUN = 40
STUCK_PASSES = 3
MAX_TEXT = 64 * 1024  # characters of a mail's text in the log, as a webhook's 64 KiB body
MIN_BACKOFF = 0.2
MAX_BACKOFF = 60.0


def redact(address: str) -> str:
    """a***@example.com: enough to tell senders apart in a log, not enough to harvest."""
    local, _, domain = address.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"


@dataclass
class Backfilled:
    logged: int = 0
    already: int = 0


class ImapDown(Exception):
    """The IMAP connection failed or answered NO/BAD: reconnect with backoff."""


class SinkFailed(Exception):
    """The pipeline could not commit a message: nothing after it is acknowledged."""


@dataclass(frozen=True, slots=True)
class ImapSettings:
    host: str
    port: int
    security: Security
    username: str
    password: str
    folder: str = "INBOX"
    processed_folder: str | None = None
    poll_interval: float = 30.0
    idle_recheck: float = 300.0
    timeout: float = 30.0
    ca_file: str | None = None
    # No automatic acknowledgement to mail the server received longer ago than this.
    acknowledge_max_age: timedelta = timedelta(days=2)


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str
    port: int
    security: Security
    username: str | None
    password: str | None
    timeout: float = 30.0
    ca_file: str | None = None


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file)


# --- the mail store: raw messages and attachments on disk ------------------------------------


class MailStore:
    def __init__(self, root: str | Path, max_attachment_bytes: int) -> None:
        self.root = Path(root)
        self.max_attachment_bytes = max_attachment_bytes

    def _write(self, path: Path, data: bytes) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                tmp = path.with_suffix(path.suffix + ".part")
                tmp.write_bytes(data)
                tmp.replace(path)
        except OSError as exc:
            raise MailSystemError(f"cannot write {path}: {exc.strerror or exc}") from exc

    def save_raw(self, raw: bytes, message_id: str | None = None) -> Path:
        """Keyed by the message's id when it has one, as the log is: a second copy of one mail
        (sent to two of the shop's addresses, relayed twice) is a duplicate in the log and finds
        its file already there, instead of leaving its own bytes where no row points at them (and
        forget cannot find them). Without an id (mail that cannot be read), by its bytes."""
        digest = (
            hashlib.sha256(b"message-id\0" + message_id.encode("utf-8", "surrogateescape"))
            if message_id
            else hashlib.sha256(raw)
        )
        path = self.root / f"{digest.hexdigest()}.eml"
        self._write(path, raw)
        return path

    def save_attachment(self, part: Part) -> Attachment:
        digest = hashlib.sha256(part.data).hexdigest()
        size = len(part.data)
        kind = "photo" if part.mime_type.startswith("image/") else "file"
        inline = True if part.inline else None
        if size > self.max_attachment_bytes:
            return Attachment(
                kind=kind,
                name=part.name,
                mime_type=part.mime_type,
                size=size,
                file_id=f"sha256:{digest}",
                caption=(
                    f"not kept: over {self.max_attachment_bytes} bytes (it is in the raw message)"
                ),
                inline=inline,
            )
        suffix = Path(part.name).suffix[:16] if part.name else ""
        path = self.root / "attachments" / f"{digest}{suffix}"
        self._write(path, part.data)
        return Attachment(
            kind=kind, url=path.resolve().as_uri(), name=part.name, mime_type=part.mime_type,
            size=size, file_id=f"sha256:{digest}", inline=inline,
        )


# --- raw bytes -> Inbound: the one entry point -----------------------------------------------

NOISE_TEXT = {
    "own_address": "mail from kefu's own address (not answered)",
    "auto_submitted": "automatic reply (not answered)",
    "auto_reply": "automatic reply (not answered)",
    "precedence": "bulk or list mail (not answered)",
    "list": "mailing-list mail (not answered)",
    "mailer_daemon": "mail from a mailer daemon (not answered)",
}


def _mail_meta(mail: ParsedMail, raw_path: Path, uid: int | None) -> dict[str, Any]:
    # The subject and References travel as Inbound.title and .thread, not in meta.
    meta: dict[str, Any] = {"raw_path": str(raw_path)}
    if mail.in_reply_to:
        meta["in_reply_to"] = mail.in_reply_to[0]
    if mail.date:
        meta["date"] = mail.date
    if mail.charset:
        meta["charset"] = mail.charset
    if mail.from_html:
        meta["from_html"] = True
    if mail.quote_cut:
        meta["quote_cut"] = mail.quote_cut
    if mail.defects:
        meta["defects"] = list(mail.defects)
    if uid is not None:
        meta["imap_uid"] = uid
    return meta


def to_inbound(
    raw: bytes,
    store: MailStore,
    *,
    own_address: str | None,
    uid: int | None = None,
    now: datetime | None = None,
    arrived: datetime | None = None,
    max_age: timedelta | None = None,
    history: bool = False,
    auth: AuthSettings | None = None,
) -> Inbound:
    """Never raises for bad mail: a malformed message becomes an event with its raw kept.
    Raises MailSystemError when kefu itself cannot keep the message (then nothing is acknowledged).

    `arrived` is when the server received it (IMAP INTERNALDATE); mail older than `max_age` is
    logged as usual but never acknowledged automatically. `history` (a backfill) logs the mail as
    an event of kind "history": no conversation, nothing answered, dated when it arrived.
    `meta["sender_verified"]` says whether the From domain is authenticated (channels/mail_auth.py);
    without `auth` settings nothing is verified, so it is False."""
    received = now or datetime.now(UTC)
    inbound = _without_nul(
        _to_inbound(raw, store, own_address=own_address, uid=uid, received=received, auth=auth)
    )
    if history:
        return _as_history(inbound, arrived)
    if arrived is not None and max_age is not None and received - arrived > max_age:
        days = max_age.total_seconds() / 86400
        meta = {
            **inbound.meta,
            "no_ack": f"received {arrived.isoformat()}: older than {days:g} days",
            "arrived_at": arrived.isoformat(),
        }
        return replace(inbound, meta=meta)
    return inbound


def _without_nul(inbound: Inbound) -> Inbound:
    """Each U+0000 of the mail's words and names as U+FFFD. PostgreSQL's text cannot hold it
    (the batch failed, and every retry of it, #16), SQLite's can; mail cannot be refused, and
    the same mail always maps to the same external id, so a retry is still a duplicate."""

    def clean(value: str) -> str:
        return value.replace("\x00", "\ufffd")

    fields = (inbound.text, inbound.address, inbound.external_id, inbound.display_name,
              inbound.title, *inbound.reply_to, *inbound.thread)
    if not any(v and "\x00" in v for v in fields):
        return inbound
    return replace(
        inbound,
        text=clean(inbound.text),
        address=clean(inbound.address),
        external_id=clean(inbound.external_id),
        display_name=None if inbound.display_name is None else clean(inbound.display_name),
        title=None if inbound.title is None else clean(inbound.title),
        reply_to=tuple(clean(v) for v in inbound.reply_to),
        thread=tuple(clean(v) for v in inbound.thread),
    )


class _Captured(logging.Handler):
    """Keeps a worker's log records so that the channel's process logs them where kefu logs."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        # QueueHandler.prepare: the message formatted and the traceback as text, so it pickles
        self.records.append(logging.handlers.QueueHandler(None).prepare(record))  # type: ignore[arg-type]


def _worker_init(level: int) -> None:
    logging.getLogger().setLevel(level)


def to_inbound_in_process(
    raw: bytes, store: MailStore, kwargs: dict[str, Any]
) -> tuple[Inbound, list[logging.LogRecord]]:
    """to_inbound in a parse worker process; returns its log records with it."""
    captured = _Captured()
    root = logging.getLogger()
    root.addHandler(captured)
    try:
        return to_inbound(raw, store, **kwargs), captured.records
    finally:
        root.removeHandler(captured)


def run_in_process(
    store: MailStore, jobs: list[tuple[bytes, dict[str, Any]]]
) -> list[tuple[Inbound, list[logging.LogRecord]]]:
    """A run of messages parsed in one worker job, in order."""
    return [to_inbound_in_process(raw, store, kwargs) for raw, kwargs in jobs]


def _as_history(inbound: Inbound, arrived: datetime | None) -> Inbound:
    meta = {**inbound.meta, "kind": "history", "was": inbound.meta.get("kind", inbound.kind)}
    return replace(
        inbound, kind="event", meta=meta, received_at=arrived or inbound.received_at,
        reply_to=(), conversation_hint=None,
    )


def _to_inbound(
    raw: bytes,
    store: MailStore,
    *,
    own_address: str | None,
    uid: int | None,
    received: datetime,
    auth: AuthSettings | None = None,
) -> Inbound:
    try:
        mail = parse_message(raw, own_address=own_address)
        raw_path = store.save_raw(raw, external_id(mail.message_id, raw))
        attachments = tuple(store.save_attachment(p) for p in mail.attachments)
    except MailSystemError:
        raise
    except MalformedMail as exc:
        return _malformed(raw, store.save_raw(raw), str(exc), received, uid)
    except Exception as exc:
        log.exception("email.parse.failure uid=%s", uid)
        return _malformed(
            raw, store.save_raw(raw), f"unreadable: {type(exc).__name__}: {exc}", received, uid
        )
    meta = _mail_meta(mail, raw_path, uid)
    kind, text = "message", mail.text
    if len(text) > MAX_TEXT:
        # The log holds what a person reads; a newsletter's megabytes stay in the raw message.
        # Classifying and storing them ran on the event loop beside every other channel.
        text = text[:MAX_TEXT].rstrip() + "\n[…]"
        meta["defects"] = [*meta.get("defects", []), "text_truncated"]
    if mail.noise == "bounce":
        kind = "event"
        meta.update(kind="bounce", failed_recipients=list(mail.failed_recipients))
        if mail.dsn_status:
            meta["status"] = mail.dsn_status
        text = (
            f"delivery failed to {', '.join(mail.failed_recipients)} "
            f"({mail.dsn_status or 'no status'})"
        )
        if mail.text:
            text = (
                f"{text}\n\n{mail.text}"  # the server's own explanation, as a mail client shows it
            )
    elif mail.noise is not None:
        kind = "event"
        meta.update(
            kind="auto_reply" if mail.noise != "own_address" else "own_address", noise=mail.noise
        )
        text = f"{NOISE_TEXT.get(mail.noise, mail.noise)}: {mail.subject}\n\n{mail.text}".strip()
    if mail.sender == UNKNOWN_SENDER:
        meta["no_ack"] = "no sender address in From, Reply-To or Sender"
    verdict = authenticate(raw, mail.sender, mail.text, auth) if auth is not None else None
    meta["sender_verified"] = verdict is not None
    if verdict is not None:
        meta["auth"] = verdict
    return Inbound(
        channel=CHANNEL,
        external_id=external_id(mail.message_id, raw),
        address=mail.sender,
        text=text,
        received_at=received,
        kind=kind,
        display_name=mail.display_name[:200]
        if mail.display_name
        else None,  # customers.display_name
        language=mail.language if kind == "message" else None,
        attachments=attachments,
        reply_to=reply_ids(mail) if kind == "message" else (),
        conversation_hint=conversation_token(mail.subject) if kind == "message" else None,
        thread=tuple(mail.references),
        title=mail.subject,
        meta=meta,
    )


# RFC 5322 2.1.1: no line is longer than 998 characters, so no real Message-ID is either; a longer
# one is stored as its hash (the same every time, so the log still deduplicates it).
MAX_EXTERNAL_ID = 998


def external_id(message_id: str, raw: bytes) -> str:
    if len(message_id) <= MAX_EXTERNAL_ID:
        return message_id
    digest = hashlib.sha256(message_id.encode("utf-8", "surrogateescape")).hexdigest()[:40]
    return f"sha256-{digest}@long-message-id.kefu.invalid"


_FROM = re.compile(
    rb"^From:[^\r\n]*?([A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+)", re.IGNORECASE | re.MULTILINE
)


def _malformed(
    raw: bytes, raw_path: Path, reason: str, received: datetime, uid: int | None
) -> Inbound:
    log.warning("email.parse.malformed uid=%s reason=%s raw=%s", uid, reason, raw_path.name)
    found = _FROM.search(raw[:16384])
    address = found.group(1).decode("ascii").lower() if found else "unknown@kefu.invalid"
    msgid = re.search(rb"^Message-ID:\s*<([^<>\s]+)>", raw[:16384], re.IGNORECASE | re.MULTILINE)
    return Inbound(
        channel=CHANNEL,
        external_id=external_id(msgid.group(1).decode("ascii", "replace"), raw)
        if msgid
        else synthetic_msgid(raw),
        address=address,
        text=f"malformed email: {reason}",
        received_at=received,
        kind="event",
        meta={
            "kind": "malformed",
            "reason": reason,
            "raw_path": str(raw_path),
            **({"imap_uid": uid} if uid is not None else {}),
        },
    )


def brief(exc: BaseException) -> str:
    """The error's kind and first line, without the statement parameters (customers' words) that
    database errors carry after it."""
    first = str(getattr(exc, "orig", None) or exc).splitlines()
    return f"{type(exc).__name__}: {first[0][:200] if first else ''}"


def unloggable(raw: bytes, inbound: Inbound, reason: str, uid: int | None) -> Inbound:
    """The smallest event that still says a mail came and where its raw bytes are."""
    address = inbound.address if len(inbound.address) <= 320 else "unknown@kefu.invalid"
    meta: dict[str, Any] = {"kind": "unloggable", "reason": reason}
    for key in ("raw_path", "imap_uid"):
        if key in inbound.meta:
            meta[key] = inbound.meta[key]
    return Inbound(
        channel=CHANNEL,
        external_id=f"unloggable-{synthetic_msgid(raw)}",
        address=address,
        text=f"an email could not be logged ({reason}); its raw message is kept",
        received_at=inbound.received_at,
        kind="event",
        title=inbound.title[:200] if inbound.title else None,
        meta=meta,
    )


# --- IMAP -------------------------------------------------------------------------------------

_UIDVALIDITY = re.compile(rb"UIDVALIDITY (\d+)")
_UIDNEXT = re.compile(rb"UIDNEXT (\d+)")
_FETCH_UID = re.compile(rb"UID (\d+)")
_INTERNALDATE = re.compile(rb'INTERNALDATE "([^"]+)"')


@dataclass(frozen=True, slots=True)
class Fetched:
    uid: int
    raw: bytes
    arrived: datetime | None  # INTERNALDATE: when the server received it (RFC 3501 2.3.3)


def internaldate(value: bytes) -> datetime | None:
    try:
        return datetime.strptime(value.decode("ascii").strip(), "%d-%b-%Y %H:%M:%S %z")
    except ValueError:
        return None


def parse_fetched(lines: Sequence[bytes | bytearray]) -> list[Fetched]:
    """The messages of a UID FETCH (UID INTERNALDATE BODY.PEEK[]) response, in UID order."""
    found: list[Fetched] = []
    uid: int | None = None
    body: bytes | None = None
    arrived: datetime | None = None
    for line in lines:
        if isinstance(line, bytearray):
            body = bytes(line)
            continue
        if re.match(rb"\d+ FETCH \(", line):
            if uid is not None and body is not None:
                found.append(Fetched(uid, body, arrived))
            uid, body, arrived = None, None, None
        match = _FETCH_UID.search(line)
        if match:
            uid = int(match.group(1))
        date = _INTERNALDATE.search(line)
        if date:
            arrived = internaldate(date.group(1))
    if uid is not None and body is not None:
        found.append(Fetched(uid, body, arrived))
    return sorted(found, key=lambda f: f.uid)


def parse_fetch(lines: Sequence[bytes | bytearray]) -> list[tuple[int, bytes]]:
    """(uid, raw message) pairs from a UID FETCH (UID BODY.PEEK[]) response, in UID order."""
    return [(f.uid, f.raw) for f in parse_fetched(lines)]


def _search_uids(response: Response) -> set[int]:
    uids: set[int] = set()
    for line in response.lines[:-1]:
        text = bytes(line).decode("ascii", "replace")
        if text.startswith("SEARCH"):
            text = text[len("SEARCH"):]
        uids.update(int(x) for x in text.split() if x.isdigit())
    return uids


def _uid_set(uids: Sequence[int]) -> str:
    return ",".join(str(u) for u in uids)


_EXISTS = re.compile(rb"^\* \d+ EXISTS")


class _Protocol(IMAP4ClientProtocol):  # type: ignore[misc]  # aioimaplib has no type information
    """Counts EXISTS announcements (RFC 3501 7.3.1), which aioimaplib drops when they arrive
    inside another command's answer: mail that arrives during a SEARCH is not missed."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        conn_lost_cb: Callable[[Exception | None], None] | None,
    ) -> None:
        super().__init__(loop, conn_lost_cb)
        self.exists_seen = 0

    def _untagged_response(self, line: bytes) -> Command:
        if _EXISTS.match(line):
            self.exists_seen += 1
        return super()._untagged_response(line)


class _Client(IMAP4):  # type: ignore[misc]  # aioimaplib has no type information
    protocol: _Protocol

    def create_client(
        self,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop | None,
        conn_lost_cb: Callable[[Exception | None], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        local_loop = loop or asyncio.get_running_loop()
        self.protocol = _Protocol(local_loop, conn_lost_cb)
        self._client_task = local_loop.create_task(
            local_loop.create_connection(lambda: self.protocol, host, port, ssl=ssl_context)
        )


@dataclass(slots=True)
class _Prepared:
    """A fetched chunk whose parsing has started: its first run parsed, the rest under way."""

    messages: list[Fetched]
    first: list[Inbound]
    runs: AsyncGenerator[list[Inbound], None]


async def _discard(upcoming: asyncio.Future[_Prepared]) -> None:
    """A chunk prepared ahead that will not be committed now: its parsing stopped; the next pass
    fetches it again."""
    upcoming.cancel()
    try:
        prepared = await upcoming
    except BaseException:  # noqa: BLE001 - cancelled or failed: nothing of it to keep
        return
    await prepared.runs.aclose()


class ImapReader:
    """One folder on one server: connect, catch up from the checkpoint, then IDLE or poll."""

    def __init__(
        self,
        settings: ImapSettings,
        convert: Callable[[list[Fetched]], AsyncGenerator[list[Inbound], None]],
        load: LoadState,
        save: SaveState,
    ) -> None:
        self.s = settings
        self.convert = convert
        self.load = load
        self.save = save
        self.key = f"imap:{settings.username}:{settings.folder}"
        self.client: _Client | None = None
        self._lost = asyncio.Event()
        self.uidvalidity = 0
        self.last_uid = 0
        self.connected = asyncio.Event()  # set while a session is live (tests and health)
        self.move = False
        self.failures: dict[int, int] = {}  # uid -> passes in a row whose commit failed

    # The timeout races the call against a dropped connection, which asyncio.timeout around the
    # call cannot do.
    async def _call(self, aw: Awaitable[T], timeout: float | None = None) -> T:  # noqa: ASYNC109
        """Awaits an aioimaplib call, failing fast when the connection drops (aioimaplib itself
        would wait for its own timeout)."""
        task: asyncio.Future[T] = asyncio.ensure_future(aw)
        lost = asyncio.ensure_future(self._lost.wait())
        waiters: set[asyncio.Future[Any]] = {task, lost}
        try:
            done, _ = await asyncio.wait(
                waiters, timeout=timeout or self.s.timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except BaseException:
            # Cancelled (kefu stopping, a chunk prepared ahead dropped): the call goes too, or it
            # runs on and its own timeout ends as "Task exception was never retrieved".
            task.cancel()
            raise
        finally:
            lost.cancel()
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise ImapDown("connection lost" if lost in done else "timed out")

    async def _ok(
        self,
        aw: Awaitable[Response],
        what: str,
        timeout: float | None = None,  # noqa: ASYNC109 - passed on to _call
    ) -> Response:
        response = await self._call(aw, timeout)
        if response.result != "OK":
            detail = b" ".join(bytes(x) for x in response.lines[-1:]).decode("utf-8", "replace")
            raise ImapDown(f"{what} answered {response.result}: {detail[:200]}")
        return response

    def _on_lost(self, exc: Exception | None) -> None:
        self._lost.set()

    async def connect(self) -> _Client:
        self._lost = asyncio.Event()
        context = tls_context(self.s.ca_file) if self.s.security != "none" else None
        client = _Client(
            self.s.host, self.s.port, timeout=self.s.timeout, conn_lost_cb=self._on_lost,
            ssl_context=context if self.s.security == "tls" else None,
        )
        self.client = client
        await self._call(client.wait_hello_from_server())
        if self.s.security == "starttls":
            assert context is not None  # made above for every security but "none"
            await self._starttls(client, context)
        await self._ok(client.login(self.s.username, self.s.password), "LOGIN")
        return client

    async def _starttls(self, client: _Client, context: ssl.SSLContext) -> None:
        # RFC 3501 6.2.1; aioimaplib 2 has the command but no helper: upgrade the transport here.
        protocol = client.protocol
        if "STARTTLS" not in protocol.capabilities:
            raise ImapDown("the server does not offer STARTTLS (imap_security = \"starttls\")")
        command = Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        response = await self._call(protocol.execute(command))
        if response.result != "OK":
            raise ImapDown(f"STARTTLS answered {response.result}")
        loop = asyncio.get_running_loop()
        transport = await self._call(
            loop.start_tls(protocol.transport, protocol, context, server_hostname=self.s.host)
        )
        protocol.transport = transport
        await self._call(protocol.capability())  # RFC 3501: capabilities may change after TLS

    async def select(self, client: _Client) -> None:
        response = await self._ok(client.select(self.s.folder), f"SELECT {self.s.folder}")
        lines = b" ".join(bytes(x) for x in response.lines)
        found = _UIDVALIDITY.search(lines)
        uidvalidity = int(found.group(1)) if found else 0
        state = await self.load(self.key) or {}
        self.uidvalidity = uidvalidity
        if state.get("uidvalidity") == uidvalidity:
            self.last_uid = int(state.get("last_uid", 0))
        else:
            # First contact with this folder (or its UIDs were renumbered, RFC 3501 2.3.1.1):
            # what is already there is history, not mail to answer. Start at the current end;
            # `kefu email backfill` logs the rest as history on request.
            uidnext = _UIDNEXT.search(lines)
            self.last_uid = (
                int(uidnext.group(1)) - 1 if uidnext else await self._highest_uid(client)
            )
            await self.save(self.key, {"uidvalidity": uidvalidity, "last_uid": self.last_uid})
            log.warning(
                "email.imap.first_contact folder=%s uidvalidity=%s old_uidvalidity=%s "
                "start_after_uid=%d: "
                "mail already in the folder is not read or answered; "
                "`kefu email backfill --since DATE` logs it as history",
                self.s.folder,
                uidvalidity,
                state.get("uidvalidity"),
                self.last_uid,
            )
        if self.s.processed_folder:
            created = await self._call(client.create(self.s.processed_folder))
            if created.result != "OK":
                log.debug("email.imap.create result=%s (exists already)", created.result)
            self.move = client.has_capability("MOVE")

    async def _highest_uid(self, client: _Client) -> int:
        self.last_uid = 0
        return max(await self.new_uids(client), default=0)

    async def new_uids(self, client: _Client) -> list[int]:
        response = await self._ok(
            client.uid_search(f"UID {self.last_uid + 1}:*", charset=None), "UID SEARCH"
        )
        # "n:*" always matches the highest UID even when it is below n (RFC 3501 6.4.8)
        return sorted(u for u in _search_uids(response) if u > self.last_uid)

    async def drain(self, client: _Client, sink: Sink) -> int:
        total = 0
        while True:
            mark = client.protocol.exists_seen
            uids = await self.new_uids(client)
            if not uids:
                if client.protocol.exists_seen != mark:
                    continue  # mail arrived while we searched: search again before idling
                return total
            chunks = [uids[i : i + FETCH_CHUNK] for i in range(0, len(uids), FETCH_CHUNK)]
            # The next chunk is fetched and its parsing started while this one commits, so the
            # pipeline does not wait for a fetch and a first parse at every chunk. Acknowledgement
            # and checkpoint still follow the chunks' order, each after its commit.
            upcoming: asyncio.Future[_Prepared] | None = None
            try:
                following = asyncio.ensure_future(self._prepare(client, chunks[0]))
                for i, chunk in enumerate(chunks):
                    upcoming = following
                    prepared = await following
                    upcoming = None
                    if i + 1 < len(chunks):
                        following = asyncio.ensure_future(self._prepare(client, chunks[i + 1]))
                        upcoming = following
                    total += await self._batch(client, chunk, sink, prepared)
            finally:
                if upcoming is not None:
                    await _discard(upcoming)

    async def _prepare(self, client: _Client, uids: list[int]) -> _Prepared:
        """Fetches the messages and starts parsing them all; waits for the first run only."""
        messages = await self._fetch(client, uids)
        runs = self.convert(messages)
        try:
            first: list[Inbound] | None = await anext(runs, None)
        except BaseException:
            await runs.aclose()
            raise
        return _Prepared(messages, first or [], runs)

    async def _fetch(self, client: _Client, uids: list[int]) -> list[Fetched]:
        response = await self._ok(
            client.uid("fetch", _uid_set(uids), "(UID INTERNALDATE BODY.PEEK[])"),
            "UID FETCH",
            timeout=self.s.timeout * 4,
        )
        return parse_fetched(response.lines)

    async def _batch(
        self, client: _Client, uids: list[int], sink: Sink, prepared: _Prepared
    ) -> int:
        messages = prepared.messages
        inbounds: list[Inbound] = []
        sunk: list[asyncio.Future[Any]] = []
        try:
            async with contextlib.aclosing(prepared.runs) as runs:
                run: list[Inbound] | None = prepared.first
                while run is not None:
                    inbounds += run
                    sunk += [asyncio.ensure_future(sink(i)) for i in run]
                    run = await anext(runs, None)
        except BaseException as exc:
            # What was handed over commits or fails on its own (or is cancelled with the reader);
            # nothing is acknowledged and the checkpoint stays, so the next pass fetches again
            # and gets "duplicate" for what was committed.
            if isinstance(exc, asyncio.CancelledError):
                for task in sunk:
                    task.cancel()
            await asyncio.gather(*sunk, return_exceptions=True)
            raise
        results = await asyncio.gather(*sunk, return_exceptions=True)
        outcome: dict[int, BaseException | None] = {}
        for message, inbound, result in zip(messages, inbounds, results, strict=True):
            error = result if isinstance(result, BaseException) else None
            if error is not None and not isinstance(error, asyncio.CancelledError):
                error = await self._unstick(message, inbound, error, sink)
            outcome[message.uid] = error
        done = [uid for uid, error in outcome.items() if error is None]
        failed = [(uid, error) for uid, error in outcome.items() if error is not None]
        for uid in done:
            self.failures.pop(uid, None)
        if done:
            await self._acknowledge(client, done)
        # The checkpoint moves only over a run of committed messages; past the first failure, the
        # next pass fetches again and the pipeline answers "duplicate" for what was committed.
        checkpoint = self.last_uid
        first_failed = failed[0][0] if failed else None
        for uid in uids:
            if first_failed is not None and uid >= first_failed:
                break
            checkpoint = uid
        if checkpoint != self.last_uid:
            self.last_uid = checkpoint
            await self.save(self.key, {"uidvalidity": self.uidvalidity, "last_uid": checkpoint})
        if failed:
            uid, error = failed[0]
            raise SinkFailed(f"uid {uid}: {brief(error)}")
        return len(done)

    async def _unstick(
        self, message: Fetched, inbound: Inbound, error: BaseException, sink: Sink
    ) -> BaseException | None:
        """A message whose commit fails pass after pass must not hold the folder up: after
        STUCK_PASSES it is logged as an event that says so (raw kept) and acknowledged. If even
        that cannot be committed, kefu's own side is down and the message waits."""
        passes = self.failures[message.uid] = self.failures.get(message.uid, 0) + 1
        log.warning(
            "email.imap.commit_failed uid=%d pass=%d error=%s", message.uid, passes, brief(error)
        )
        if passes < STUCK_PASSES:
            return error
        event = unloggable(message.raw, inbound, brief(error), message.uid)
        try:
            await sink(event)
        except Exception as again:  # noqa: BLE001 - reported by the caller as the pass's failure
            return again
        log.error(
            "email.imap.unloggable uid=%d passes=%d error=%s: logged as an event, raw kept at %s",
            message.uid, passes, brief(error), inbound.meta.get("raw_path"),
        )
        return None

    async def _acknowledge(self, client: _Client, uids: list[int]) -> None:
        uid_set = _uid_set(uids)
        if self.s.processed_folder:
            if self.move:
                await self._ok(client.uid("move", uid_set, self.s.processed_folder), "UID MOVE")
                return
            await self._ok(client.uid("copy", uid_set, self.s.processed_folder), "UID COPY")
            await self._ok(
                client.uid("store", uid_set, "+FLAGS.SILENT", r"(\Seen \Deleted)"), "UID STORE"
            )
            if client.has_capability("UIDPLUS"):
                await self._ok(client.uid("expunge", uid_set), "UID EXPUNGE")
            return
        await self._ok(client.uid("store", uid_set, "+FLAGS.SILENT", r"(\Seen)"), "UID STORE")

    async def wait_for_mail(self, client: _Client) -> None:
        """Returns when new mail may be there: an IDLE push, the re-check timer, or a poll tick."""
        if not client.has_capability("IDLE"):
            await self._sleep(self.s.poll_interval)
            return
        # RFC 2177: IDLE until the server pushes EXISTS; end it before the 29-minute limit and
        # re-check anyway, in case a push was missed.
        idle = await self._call(client.idle_start(timeout=self.s.idle_recheck))
        try:
            while True:
                push = await self._call(
                    client.wait_server_push(timeout=self.s.idle_recheck + 5),
                    self.s.idle_recheck + 10,
                )
                if push == STOP_WAIT_SERVER_PUSH or any(b"EXISTS" in bytes(x) for x in push):
                    return
        finally:
            if client.has_pending_idle() and not self._lost.is_set():
                client.idle_done()
                with contextlib.suppress(asyncio.TimeoutError, AioImapException):
                    await asyncio.wait_for(idle, self.s.timeout)
            elif not idle.done():
                idle.cancel()

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._lost.wait(), seconds)
        except TimeoutError:
            return
        raise ImapDown("connection lost")

    async def session(self, sink: Sink, on_progress: Callable[[], None]) -> None:
        client = await self.connect()
        try:
            await self.select(client)
            log.info(
                "email.imap.connected host=%s folder=%s idle=%s last_uid=%d",
                self.s.host, self.s.folder, client.has_capability("IDLE"), self.last_uid,
            )
            self.connected.set()
            while True:
                count = await self.drain(client, sink)
                if count:
                    log.info("email.imap.ingested count=%d last_uid=%d", count, self.last_uid)
                on_progress()
                await self.wait_for_mail(client)
        finally:
            self.connected.clear()
            await self.close()

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        if not self._lost.is_set():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.logout(), 2)
        transport = client.protocol.transport if client.protocol else None
        if transport is not None:
            transport.close()
        for task in list(client.tasks) + list(client.protocol.tasks):
            task.cancel()


# --- the channel ------------------------------------------------------------------------------


def _smtp_error(exc: Exception) -> TransientError | PermanentError:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        refusals = exc.recipients
        codes = [r.code for r in refusals]
        detail = "; ".join(f"{r.code} {r.message}" for r in refusals)
        if codes and all(500 <= c < 600 for c in codes):
            return PermanentError(
                f"recipient refused: {detail}",
                unreachable=all(_gone(r.code, r.message) for r in refusals),
            )
        return TransientError(f"recipient deferred: {detail}")
    config = smtp_config_error(exc)
    if config is not None:
        return config
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        detail = f"{exc.code} {exc.message}"
        # RFC 5321 4.2.1: 4yz transient negative completion, 5yz permanent
        if 500 <= exc.code < 600:
            return PermanentError(
                f"SMTP refused: {detail}", unreachable=_gone(exc.code, exc.message)
            )
        return TransientError(f"SMTP deferred: {detail}")
    return TransientError(f"SMTP {type(exc).__name__}: {exc}")


class SmtpConfigError(PermanentError):
    """The relay refused kefu itself (no AUTH offered, login refused): no send can succeed until
    the operator changes [email]; retrying would only repeat it."""

    def __init__(self, message: str, setting: str) -> None:
        super().__init__(message)
        self.setting = setting


_NO_AUTH = re.compile(
    r"AUTH extension (is )?not supported|No suitable authentication method", re.IGNORECASE
)


def smtp_config_error(exc: Exception) -> SmtpConfigError | None:
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        # RFC 4954 6: 535 is the credentials, 534/538 the mechanism or TLS; none is the message's
        # fault.
        return SmtpConfigError(
            f"SMTP login refused ({exc.code} {exc.message}): check [email] smtp_username (or "
            "username) and the password variable, or set smtp_username = \"\" for a relay that "
            "needs no login",
            "smtp_username",
        )
    if isinstance(exc, aiosmtplib.SMTPException) and _NO_AUTH.search(str(exc)):
        return SmtpConfigError(
            f"the SMTP server offers no login ({exc}): set [email] smtp_username = \"\" to send "
            "without one",
            "smtp_username",
        )
    return None


_GONE = re.compile(
    r"\b5\.1\.[0-3]\b|user unknown|no such (user|mailbox)|does not exist"
    r"|unknown (user|recipient)|mailbox unavailable",
    re.IGNORECASE,
)


def _gone(code: int, message: str) -> bool:
    """RFC 3463 X.1.1 'bad destination mailbox address': the address itself is dead."""
    return code in (550, 551, 553) and bool(_GONE.search(message))


def first_line(text: str, limit: int = 78) -> str:
    line = next((x.strip() for x in text.splitlines() if x.strip()), "")
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


_ADDR = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


class EmailChannel:
    name = CHANNEL
    max_text: int | None = None  # one message, whatever its length

    def __init__(
        self,
        *,
        address: str,
        imap: ImapSettings,
        smtp: SmtpSettings,
        store: MailStore,
        composer: Composer,
        load_state: LoadState,
        save_state: SaveState,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        auth: AuthSettings | None = None,
    ) -> None:
        self.address = address.lower()
        self.auth = auth or AuthSettings()
        self.smtp = smtp
        self.store = store
        self.composer = composer
        self.clock = clock
        self.reader = ImapReader(imap, self._convert_all, load_state, save_state)
        self._task: asyncio.Task[None] | None = None
        self._config_error_logged = False
        self._pool: ProcessPoolExecutor | None = None

    def _kwargs(self, fetched: Fetched, history: bool) -> dict[str, Any]:
        return dict(
            own_address=self.address, uid=fetched.uid, now=self.clock(), arrived=fetched.arrived,
            max_age=self.reader.s.acknowledge_max_age, history=history,
            auth=None if history else self.auth,
        )

    def _convert(self, fetched: Fetched, *, history: bool = False) -> Inbound:
        return to_inbound(fetched.raw, self.store, **self._kwargs(fetched, history))

    async def _convert_all(
        self, messages: list[Fetched], *, history: bool = False
    ) -> AsyncGenerator[list[Inbound], None]:
        """MIME parsing and disk writes off the event loop (webhooks, Telegram and the outbox
        share it). Yields the messages' Inbounds in order, in runs, each as soon as it is parsed.
        Many messages, or large ones, go to the worker processes; a few small ones to a thread
        (a job to a process costs more than parsing one small mail)."""
        pool = self._pool
        if pool is None:
            yield await asyncio.to_thread(
                lambda: [self._convert(m, history=history) for m in messages]
            )
            return
        loop = asyncio.get_running_loop()
        many = len(messages) >= PROCESS_PARSE_COUNT
        runs: list[tuple[bool, list[Fetched]]] = []  # (in a worker process, messages)
        for m in messages:
            in_pool = many or len(m.raw) > PROCESS_PARSE_BYTES
            if runs and runs[-1][0] == in_pool and (not in_pool or many) and (
                len(runs[-1][1]) < PARSE_RUN
            ):
                runs[-1][1].append(m)
            else:
                runs.append((in_pool, [m]))
        jobs: list[asyncio.Future[list[tuple[Inbound, list[logging.LogRecord]]]]] = []
        for in_pool, run in runs:
            if in_pool:
                work = [(m.raw, self._kwargs(m, history)) for m in run]
                jobs.append(loop.run_in_executor(pool, run_in_process, self.store, work))
            else:
                jobs.append(asyncio.ensure_future(asyncio.to_thread(self._in_thread, run, history)))
        try:
            for job in jobs:
                inbounds: list[Inbound] = []
                for inbound, records in await job:
                    for record in records:
                        logging.getLogger(record.name).handle(record)
                    inbounds.append(inbound)
                yield inbounds
        finally:
            for job in jobs:
                if not job.done():
                    job.cancel()

    def _in_thread(
        self, run: list[Fetched], history: bool
    ) -> list[tuple[Inbound, list[logging.LogRecord]]]:
        return [(self._convert(m, history=history), []) for m in run]

    def _start_pool(self) -> None:
        try:
            pickle.dumps(self.auth)
        except Exception:  # noqa: BLE001 - an injected DNS resolver: parse in the thread
            log.info("email.parse.no_pool reason=auth settings cannot go to a worker process")
            return
        # forkserver: forking kefu's process (event loop, database threads) is unsafe
        self._pool = ProcessPoolExecutor(
            PARSE_WORKERS, mp_context=multiprocessing.get_context("forkserver"),
            initializer=_worker_init, initargs=(logging.getLogger().getEffectiveLevel(),),
        )

    @staticmethod
    def _warm(pool: ProcessPoolExecutor) -> None:
        # Starting a worker waits on the fork server: done here, not on the loop at the first mail.
        for future in [pool.submit(os.getpid) for _ in range(PARSE_WORKERS)]:
            future.result()

    async def _stop_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)

    async def backfill(
        self, since: date, sink: Callable[[Inbound], Awaitable[Receipt]]
    ) -> Backfilled:
        """Logs the folder's mail that arrived since `since` and lies before the reader's
        checkpoint as history: no conversation, no answer, flags untouched. Sets the checkpoint
        first if kefu never read this folder, so `kefu run` and the backfill never overlap."""
        reader = self.reader
        client = await reader.connect()
        found = Backfilled()
        try:
            await reader.select(client)
            upto = reader.last_uid
            if upto < 1:
                return found
            # RFC 3501 6.4.4: SINCE compares the internal date, i.e. when the server got the mail.
            response = await reader._ok(
                client.uid_search(f"SINCE {since.strftime('%d-%b-%Y')} UID 1:{upto}", charset=None),
                "UID SEARCH",
            )
            uids = sorted(u for u in _search_uids(response) if u <= upto)
            for start in range(0, len(uids), FETCH_CHUNK):
                messages = await reader._fetch(client, uids[start : start + FETCH_CHUNK])
                async with contextlib.aclosing(self._convert_all(messages, history=True)) as runs:
                    inbounds = [i async for run in runs for i in run]
                for receipt in await asyncio.gather(*(sink(i) for i in inbounds)):
                    if receipt.status == "duplicate":
                        found.already += 1
                    else:
                        found.logged += 1
        finally:
            await reader.close()
        return found

    async def start(self, sink: Sink) -> None:
        self._start_pool()
        self._task = asyncio.create_task(self._run(sink), name="kefu-email-imap")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.reader.close()
        await self._stop_pool()

    async def _run(self, sink: Sink) -> None:
        delay = MIN_BACKOFF
        if self._pool is not None:
            await asyncio.to_thread(self._warm, self._pool)

        def progressed() -> None:
            nonlocal delay
            delay = MIN_BACKOFF

        while True:
            try:
                await self.reader.session(sink, progressed)
            except asyncio.CancelledError:
                raise
            except (
                ImapDown,
                SinkFailed,
                MailSystemError,
                AioImapException,
                OSError,
                TimeoutError,
            ) as exc:
                log.warning(
                    "email.imap.reconnect in=%.1fs error=%s: %s", delay, type(exc).__name__, exc
                )
            except Exception:
                log.exception("email.imap.failure in=%.1fs", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    async def send(self, out: Outbound) -> SendResult:
        if not _ADDR.match(out.address):
            raise PermanentError(f"not an email address: {out.address!r}", unreachable=True)
        if out.address.lower() == self.address:
            raise PermanentError("kefu does not write to its own address")
        message, msgid = self.composer.compose(out, now=self.clock())
        if out.conversation_id is None and not title_of(out):
            # kefu writes first (a greeting): there is no conversation to name and nothing to
            # answer, so the subject is the message's own first line, not "a reply from …" with
            # an empty "[#]" token.
            message.replace_header("Subject", first_line(out.text))
        s = self.smtp
        login = bool(s.username)  # smtp_username = "": a relay that takes mail without a login
        try:
            await aiosmtplib.send(
                message,
                sender=self.address,
                recipients=[out.address],
                hostname=s.host,
                port=s.port,
                username=s.username if login else None,
                password=s.password if login else None,
                use_tls=s.security == "tls",
                start_tls=s.security == "starttls",
                tls_context=tls_context(s.ca_file) if s.security != "none" else None,
                timeout=s.timeout,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            error = _smtp_error(exc)
            if isinstance(error, SmtpConfigError):
                if not self._config_error_logged:
                    # Once per process, not once per message: the one line the operator needs.
                    log.error(
                        "email.smtp.config_error setting=[email] %s: %s", error.setting, error
                    )
                    self._config_error_logged = True
            else:
                log.warning(
                    "email.smtp.failed to=%s kind=%s error=%s",
                    redact(out.address), type(error).__name__, redact_addresses(str(error)),
                )
            raise error from exc
        self._config_error_logged = False
        log.info("email.smtp.sent to=%s message_id=%s", redact(out.address), msgid)
        return SendResult(external_id=msgid)


def sender(address: str, name: str) -> Sender:
    return Sender(address=address, name=name)

