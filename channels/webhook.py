"""Webhook channel: signed JSON in over HTTP; signed JSON replies go out to the source's
callback_url through channels/webhook_callback.py.

Signature: X-Kefu-Signature = "sha256=" + hex HMAC-SHA256(secret, "<X-Kefu-Timestamp>.<raw body>").
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import httpx
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from bot.intents import Outbound
from bot.messages import Attachment, Inbound, Receipt
from channels.base import SendResult, Sink
from channels.webhook_callback import Callbacks
from channels.webhook_signing import Source, sign

__all__ = ["Source", "WebhookChannel", "parse", "sign"]

log = logging.getLogger("kefu.webhook")

CHANNEL = "webhook"


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer to the sender: status code and JSON body."""

    status: int
    body: dict[str, Any]


def _error(status: int, code: str, message: str, **extra: Any) -> Reply:
    return Reply(status, {"error": code, "message": message, **extra})


def _storable(v: str) -> str:
    # Both databases refuse these (PostgreSQL text cannot hold NUL; neither driver can encode an
    # unpaired surrogate that a JSON "\ud800" escape produces): refuse them here, by field name.
    if "\x00" in v:
        raise ValueError("must not contain NUL characters")
    if not v.isascii():
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode (it holds an unpaired surrogate)") from None
    return v


Text = Annotated[str, AfterValidator(_storable)]
MAX_INT64 = 2**63 - 1


def _key(v: str | int) -> str:
    v = _storable(str(v))
    if not v or len(v) > MAX_ID:
        raise ValueError(f"must be 1 to {MAX_ID} characters")
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


# Ids become the log's external ids and identity addresses: long enough for any system's user ids,
# short enough for PostgreSQL's unique indexes (a B-tree entry holds at most about 2.7 kB).
MAX_ID = 512


class _User(_Strict):
    id: str | int
    name: Text | None = Field(None, max_length=200)
    email: Text | None = Field(None, max_length=320)
    language: Text | None = Field(None, max_length=16)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str | int) -> str:
        return _key(v)


class _Attachment(_Strict):
    url: Text = Field(min_length=1, max_length=2000)
    name: Text | None = Field(None, max_length=300)
    mime_type: Text | None = Field(None, max_length=120)


class _Payload(_Strict):
    id: str | int
    user: _User
    text: Text = ""  # bounded by the 64 KiB body limit
    attachments: list[_Attachment] = Field(default_factory=list, max_length=20)
    timestamp: Annotated[float, Field(allow_inf_nan=False)] | datetime | None = None
    type: Literal["message", "complaint", "survey"] = "message"
    # type "survey": the answer to the survey kefu POSTed ({"survey": {"id", "choices"}}).
    survey_id: int | None = Field(None, ge=1, le=MAX_INT64)
    score: int | None = Field(None, ge=1, le=5)
    comment: Text | None = Field(None, max_length=2000)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str | int) -> str:
        return _key(v)


def _when(value: float | datetime | None, now: float, signed_at: float, window: float) -> datetime:
    """The message's own time, trusted only within the signature window of the signed header
    time: a timestamp years away would drive created_at, business hours and SLA."""
    if value is None:
        return datetime.fromtimestamp(now, UTC)
    if isinstance(value, datetime):
        when = value if value.tzinfo else value.replace(tzinfo=UTC)
        try:
            offset = (when - datetime.fromtimestamp(signed_at, UTC)).total_seconds()
        except OverflowError:  # year 1 or 9999 in a far time zone
            offset = math.inf
    else:
        offset = value - signed_at
    if not abs(offset) <= window:
        raise ValueError(
            f"timestamp: more than {window:g} s away from X-Kefu-Timestamp "
            "(send the time the message was written, in unix seconds or ISO 8601)"
        )
    if isinstance(value, datetime):
        return when
    return datetime.fromtimestamp(value, UTC)


def _signed_time(headers: Mapping[str, str], now: float) -> float:
    """The verified request's signed timestamp (either scheme's header)."""
    for name in ("x-kefu-timestamp", "webhook-timestamp"):
        try:
            return float(int(headers.get(name, "")))
        except ValueError:
            continue
    return now


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse(
    source: str,
    body: bytes,
    now: float,
    *,
    signed_at: float | None = None,
    window: float = 300,
) -> Inbound:
    """Raises ValueError with a message fit for the sender, naming the field."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"body: not UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("body: JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"body is not JSON: {exc}") from None
    except ValueError as exc:  # NaN, Infinity, an integer of thousands of digits
        raise ValueError(f"body: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    try:
        payload = _Payload.model_validate(data)
    except RecursionError:
        raise ValueError("body: JSON nested too deeply") from None
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        ]
        raise ValueError("; ".join(problems)) from None
    user = payload.user
    assert isinstance(user.id, str) and isinstance(payload.id, str)
    meta: dict[str, Any] = {"source": source, **({"email": user.email} if user.email else {})}
    if payload.type == "survey":
        if payload.score is None:
            raise ValueError("score: a survey answer needs a score from 1 to 5")
        # An event, not the customer speaking: it never reopens the conversation it rates.
        meta["survey"] = {
            "id": payload.survey_id,
            "score": payload.score,
            "comment": payload.comment or payload.text or None,
        }
    elif not payload.text and not payload.attachments:
        raise ValueError("text: must not be empty unless attachments are given")
    return Inbound(
        channel=CHANNEL,
        external_id=f"{source}:{payload.id}",
        address=f"{source}:{user.id}",
        text=payload.text,
        received_at=_when(payload.timestamp, now, now if signed_at is None else signed_at, window),
        kind=payload.type,
        display_name=user.name,
        language=user.language,
        attachments=tuple(
            Attachment(kind="file", url=a.url, name=a.name, mime_type=a.mime_type)
            for a in payload.attachments
        ),
        meta=meta,
    )


class WebhookChannel:
    name = CHANNEL
    max_text: int | None = None  # one message, whatever its length

    def __init__(
        self,
        sources: Mapping[str, Source],
        *,
        disabled: Mapping[str, str] | None = None,
        max_skew_seconds: int = 300,
        max_body_bytes: int = 64 * 1024,
        clock: Callable[[], float] = time.time,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.sources = dict(sources)
        self.disabled = dict(disabled or {})  # name -> why it is off
        self.max_skew_seconds = max_skew_seconds
        self.max_body_bytes = max_body_bytes
        self.clock = clock
        self._sink: Sink | None = None
        # Replies go out through the sources' callback URLs, signed with the same secrets.
        self.callbacks = Callbacks(
            self.sources,
            max_skew_seconds=max_skew_seconds,
            clock=lambda: self.clock(),  # noqa: PLW0108 - read at each send: tests set it later
            http=http,
        )

    async def start(self, sink: Sink) -> None:
        self._sink = sink
        await self.callbacks.start(sink)

    async def stop(self) -> None:
        await self.callbacks.stop()

    def knows(self, source: str) -> Reply | None:
        """The early answer for a source that cannot accept anything, before reading the body."""
        if source in self.sources:
            return None
        if source in self.disabled:
            return _error(
                404, "source_disabled", f"webhook source '{source}' is off: {self.disabled[source]}"
            )
        return _error(404, "unknown_source", f"no webhook source named '{source}'")

    async def handle(self, source_name: str, headers: Mapping[str, str], body: bytes) -> Reply:
        early = self.knows(source_name)
        if early is not None:
            return early
        source = self.sources[source_name]
        if len(body) > self.max_body_bytes:
            return _error(413, "too_large", f"body is over {self.max_body_bytes} bytes")
        now = self.clock()
        problem = self._check_signature(source, headers, body, now)
        if problem is not None:
            log.warning("webhook.signature.rejected source=%s reason=%s", source_name, problem)
            return _error(401, "bad_signature", problem)
        try:
            inbound = parse(
                source_name,
                body,
                now,
                signed_at=_signed_time(headers, now),
                window=self.max_skew_seconds,
            )
        except ValueError as exc:
            return _error(422, "malformed", str(exc))
        except Exception as exc:  # noqa: BLE001 - whatever a payload provokes is the payload's fault
            log.warning(
                "webhook.parse.unexpected source=%s error=%s", source_name, type(exc).__name__
            )
            return _error(422, "malformed", f"body: cannot be read ({type(exc).__name__})")
        if self._sink is None:
            return _error(503, "not_ready", "kefu is starting; try again")
        receipt = await self._sink(inbound)
        assert isinstance(receipt, Receipt)
        status = 200 if receipt.status == "duplicate" else 202
        return Reply(
            status,
            {
                "status": receipt.status,
                "interaction_id": receipt.interaction_id,
                "conversation_id": receipt.conversation_id,
            },
        )

    def _check_signature(
        self, source: Source, headers: Mapping[str, str], body: bytes, now: float
    ) -> str | None:
        return source.signer(self.max_skew_seconds).verify(headers, body, now)

    async def send(self, out: Outbound) -> SendResult:
        """The channel's sending half (channels/webhook_callback.py), for callers that hold the
        whole channel; kefu's outbox is given the sending half itself (bot/app.py)."""
        return await self.callbacks.send(out)
