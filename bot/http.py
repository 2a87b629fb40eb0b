"""The one HTTP server: webhooks in, health and metrics out (and Telegram's webhook, when on)."""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from bot.metrics import Metrics
from bot.pipeline import Rejected, Unavailable
from channels.http_body import BodyTooLarge, read_body
from channels.webhook import WebhookChannel

log = logging.getLogger("kefu.http")


def build_app(
    *,
    webhook: WebhookChannel | None,
    metrics: Metrics,
    health: Callable[[], Awaitable[dict[str, object]]],
    before_metrics: Callable[[], Awaitable[None]] | None = None,
    extra_routes: Sequence[BaseRoute] = (),
) -> Starlette:
    async def post_webhook(request: Request) -> Response:
        source = request.path_params["source"]
        started = time.perf_counter()
        if webhook is None:
            return JSONResponse({"error": "unknown_source", "message": "webhooks are off"}, 404)
        early = webhook.knows(source)
        if early is not None:
            return JSONResponse(early.body, early.status)
        try:
            body = await read_body(request, webhook.max_body_bytes)
        except BodyTooLarge:
            metrics.inbound.labels("webhook", "rejected").inc()
            return JSONResponse(
                {"error": "too_large", "message": f"body is over {webhook.max_body_bytes} bytes"},
                413,
            )
        except ClientDisconnect:
            return Response(status_code=400)
        try:
            reply = await webhook.handle(source, request.headers, body)
        except Unavailable as exc:
            metrics.inbound.labels("webhook", "unavailable").inc()
            return JSONResponse(
                {"error": exc.reason, "message": f"{exc}; send it again later",
                 "retry_after": exc.retry_after},
                503,
                headers={"Retry-After": str(math.ceil(exc.retry_after))},
            )
        except Rejected as exc:
            metrics.inbound.labels("webhook", "rejected").inc()
            return JSONResponse({"error": "unprocessable", "message": str(exc)}, 422)
        except Exception as exc:  # noqa: BLE001 - any failure is logged and answered 500
            # The kind and where, not the message: an error's text can quote what the customer
            # wrote (a handler's ValueError); database errors come without their parameters.
            log.error(
                "webhook.receive.failure source=%s error=%s\n%s",
                source,
                type(exc).__name__,
                "".join(traceback.format_tb(exc.__traceback__)).rstrip(),
            )
            metrics.failures.labels("pipeline").inc()
            return JSONResponse(
                {"error": "internal", "message": "the message was not stored; send it again"}, 500
            )
        result = {200: "duplicate", 202: "accepted"}.get(reply.status, "rejected")
        metrics.inbound.labels("webhook", result).inc()
        if reply.status in (200, 202):
            metrics.receive_seconds.labels("webhook").observe(time.perf_counter() - started)
        return JSONResponse(reply.body, reply.status)

    async def healthz(request: Request) -> Response:
        state = await health()
        return JSONResponse(state, 200 if state.get("status") == "ok" else 503)

    async def get_metrics(request: Request) -> Response:
        if before_metrics is not None:
            await before_metrics()
        return Response(metrics.render(), media_type=metrics.content_type)

    routes: list[BaseRoute] = [
        Route("/webhooks/{source}", post_webhook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", get_metrics, methods=["GET"]),
        *extra_routes,
    ]
    return Starlette(routes=routes)
