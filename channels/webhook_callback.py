"""The webhook channel's sending half: a reply to a webhook customer is a signed JSON POST to their
source's callback_url (README, "Replies to a webhook customer"), retried by the outbox on a
network error, 408, 425, 429 or 5xx, given up on any other 4xx.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from bot.intents import Acknowledgement, Intent, Outbound, Survey
from channels.base import PermanentError, SendResult, Sink, TransientError
from channels.webhook_signing import Source

CHANNEL = "webhook"


class Callbacks:
    """Sends what the outbox hands it to the callback URL of the source named in the address
    ("<source>:<user id>")."""

    name = CHANNEL
    max_text: int | None = None  # one message, whatever its length

    def __init__(
        self,
        sources: Mapping[str, Source],
        *,
        max_skew_seconds: int = 300,
        clock: Callable[[], float] = time.time,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.sources = sources
        self.max_skew_seconds = max_skew_seconds
        self.clock = clock
        self._http = http
        self._owns_http = http is None

    async def start(self, sink: Sink | None = None) -> None:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0))

    async def stop(self) -> None:
        if self._http is not None and self._owns_http:
            await self._http.aclose()
            self._http = None

    async def send(self, out: Outbound) -> SendResult:
        source_name, _, user_id = out.address.partition(":")
        source = self.sources.get(source_name)
        if source is None:
            raise TransientError(
                f"webhook source '{source_name}' is not configured or has no secret"
            )
        if not source.callback_url:
            raise PermanentError(f"webhook source '{source_name}' has no callback_url")
        message: dict[str, Any] = {
            "id": out.dedupe_key,
            "conversation_id": out.conversation_id,
            "user": {"id": user_id},
            "type": out.kind,
            "text": out.text,
        }
        if out.attachments:
            message["attachments"] = [a.to_json() for a in out.attachments]
        message.update(callback_fields(out.intent))
        body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            **source.signer(self.max_skew_seconds).headers(
                out.dedupe_key, int(self.clock()), body
            ),
            "Idempotency-Key": out.dedupe_key,
        }
        assert self._http is not None, "start() the channel before sending"
        try:
            response = await self._http.post(source.callback_url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}") from exc
        if response.is_success:
            return SendResult(external_id=response.headers.get("x-request-id"))
        refused = f"callback answered {response.status_code}"
        # The receiver's answer can quote the message (the customer's name and words): kept
        # with the row, not logged (channels.base.ChannelError.detail).
        detail = response.text[:200] or None
        if response.status_code in (408, 425, 429) or response.status_code >= 500:
            raise TransientError(
                refused,
                retry_after=_retry_after(response.headers.get("retry-after")),
                detail=detail,
            )
        raise PermanentError(refused, detail=detail)


def callback_fields(intent: Intent) -> dict[str, Any]:
    """What the callback body adds for some intents, after the common fields (README, "Replies
    to a webhook customer"): an acknowledgement's ticket, reason and promised time; a survey's
    id and choices."""
    if isinstance(intent, Acknowledgement):
        expected = intent.expected_response_by
        return {
            "ticket": intent.conversation_id,
            "reason": intent.reason,
            "expected_response_by": expected.isoformat() if expected is not None else None,
        }
    if isinstance(intent, Survey):
        return {"survey": {"id": intent.survey_id, "choices": list(intent.choices)}}
    return {}


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to the outbox's own backoff
