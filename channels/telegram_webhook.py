"""POST /telegram/webhook on kefu's own HTTP server: Telegram's webhook mode, one server for all."""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from channels.telegram import TelegramChannel

PATH = "/telegram/webhook"
# An Update is a few KiB; anything near this is not from Telegram.
MAX_BODY = 1024 * 1024


def webhook_route(channel: TelegramChannel, path: str = PATH) -> Route:
    async def endpoint(request: Request) -> Response:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY:
            return JSONResponse({"error": "too_large"}, 413)
        try:
            body = await request.body()
        except ClientDisconnect:
            return Response(status_code=400)
        if len(body) > MAX_BODY:
            return JSONResponse({"error": "too_large"}, 413)
        reply = await channel.handle_webhook(request.headers, body)
        return JSONResponse(reply.body, reply.status)

    return Route(path, endpoint, methods=["POST"])
