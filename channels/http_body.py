"""Reading an HTTP request body under a size limit, shared by every inbound HTTP route."""

from __future__ import annotations

from starlette.requests import Request


class BodyTooLarge(Exception):
    """The body (declared or streamed) is over the route's limit."""


async def read_body(request: Request, limit: int) -> bytes:
    """The body, read chunk by chunk so an oversized one is refused before it is buffered."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)
