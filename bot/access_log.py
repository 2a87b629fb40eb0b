"""One log line per HTTP answer: method, route, webhook source, status, duration. Never a body,
a query string or a header: they carry customers' words and secrets."""

from __future__ import annotations

import logging
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("kefu.http.access")

_WEBHOOK = re.compile(r"^/webhooks/([A-Za-z0-9_-]{1,64})$")
_FIXED = frozenset({"/healthz", "/metrics", "/telegram/webhook"})


def describe(path: str) -> str:
    """The route, without anything a caller made up beyond a well-formed source name."""
    match = _WEBHOOK.match(path)
    if match:
        return f"route=/webhooks/{{source}} source={match.group(1)}"
    if path.startswith("/webhooks/"):
        return "route=/webhooks/{source} source=?"
    if path in _FIXED:
        return f"route={path}"
    return "route=?"


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: list[int] = []

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
                _write(scope, message["status"], started)
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        except BaseException:
            if not status:
                _write(scope, 500, started)
            raise


def _write(scope: Scope, status: int, started: float) -> None:
    log.info(
        "http.access method=%s %s status=%d ms=%.1f",
        scope.get("method", "?"),
        describe(str(scope.get("path", ""))),
        status,
        (time.perf_counter() - started) * 1000,
    )
