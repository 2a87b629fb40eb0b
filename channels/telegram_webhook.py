"""POST /telegram/webhook on kefu's own HTTP server: Telegram's webhook mode, one server for all.

Cheap checks first: the mode and the secret token (403) before a byte of the body is read, then the
body in a stream with the webhook channel's size limit (413), so neither a stranger nor an
oversized POST costs memory.
"""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from channels.http_body import BodyTooLarge, read_body
from channels.telegram import TelegramChannel

PATH = "/telegram/webhook"
DEFAULT_MAX_BODY = 64 * 1024  # [http] max_body_bytes


def webhook_route(
    channel: TelegramChannel, path: str = PATH, *, max_body_bytes: int = DEFAULT_MAX_BODY
) -> Route:
    async def endpoint(request: Request) -> Response:
        refused = channel.webhook_gate(request.headers)
        if refused is not None:
            return JSONResponse(refused.body, refused.status)
        try:
            body = await read_body(request, max_body_bytes)
        except BodyTooLarge:
            return JSONResponse(
                {"error": "too_large", "message": f"body is over {max_body_bytes} bytes"}, 413
            )
        except ClientDisconnect:
            return Response(status_code=400)
        reply = await channel.handle_webhook(request.headers, body)
        return JSONResponse(reply.body, reply.status)

    return Route(path, endpoint, methods=["POST"])
