"""`kefu dev echo-callback`: the other end of a webhook source, for trying kefu out.

It listens where the source's callback_url points, checks each callback's signature with the
source's secret (the same check kefu makes on requests), prints what arrived, and answers 200
(401 when the signature does not match, which kefu treats as a permanent failure).

Registered on bot/cli.py's app; shares bot/cli_common.py with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bot.cli_common import DEFAULT_CONFIG, ConfigOption, fail, load
from bot.config import Config, secret
from channels.webhook_signing import SecretError, Signer

dev_app = typer.Typer(help="Tools for trying kefu out.", no_args_is_help=True)


def _signer(cfg: Config, source: str) -> tuple[Signer, str]:
    sources = cfg.webhook.sources
    if source not in sources:
        known = ", ".join(sorted(sources)) or "none"
        fail(f"no webhook source named {source!r} in [webhook.sources] (configured: {known})", 2)
    src = sources[source]
    if not src.callback_url:
        fail(f"set [webhook.sources.{source}] callback_url: echo-callback listens there", 2)
    assert src.callback_url is not None
    current = secret(src.secret_env)
    if current is None:
        fail(f"set {src.secret_env} to the source's secret (the same value `kefu run` has)", 2)
    assert current is not None
    previous = secret(src.previous_secret_env) if src.previous_secret_env else None
    try:
        signer = Signer(
            src.signing, (current, *((previous,) if previous else ())), cfg.webhook.max_skew_seconds
        )
    except SecretError as exc:
        fail(f"the secret in {src.secret_env} {exc}", 2)
        raise
    return signer, src.callback_url


def _line(verdict: str, data: Any) -> str:
    if not isinstance(data, dict):
        return f"{verdict}  (not a JSON object)"
    kind = data.get("type", "?")
    who = (data.get("user") or {}).get("id", "?") if isinstance(data.get("user"), dict) else "?"
    where = f"conversation {data.get('conversation_id')}"
    extra = f" survey {data['survey']['id']}" if isinstance(data.get("survey"), dict) else ""
    text = str(data.get("text", "")).replace("\n", " ")
    return f"{verdict}  {kind}{extra}  {where}  to {who}: {text}"


def echo_app(signer: Signer, path: str) -> Starlette:
    async def receive(request: Request) -> Response:
        body = await request.body()
        problem = signer.verify(request.headers, body, time.time())
        try:
            data: Any = json.loads(body)
        except ValueError:
            data = None
        verdict = "signature ok" if problem is None else f"SIGNATURE REJECTED ({problem})"
        print(_line(verdict, data), flush=True)
        print("  " + body.decode("utf-8", "replace"), flush=True)
        if problem is not None:
            return JSONResponse({"error": "bad_signature", "message": problem}, 401)
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route(path, receive, methods=["POST"])])


@dev_app.command("echo-callback")
def echo_callback(
    config: ConfigOption = DEFAULT_CONFIG,
    source: Annotated[
        str, typer.Option(help="The webhook source whose callbacks to receive.")
    ] = "demo",
) -> None:
    """Receive a webhook source's callbacks at its callback_url: check each signature and print
    what arrived (Ctrl-C stops)."""
    import uvicorn

    from bot.app import StartupError, bind

    cfg = load(config)
    signer, callback_url = _signer(cfg, source)
    parts = urlsplit(callback_url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if parts.scheme != "http" or host not in ("127.0.0.1", "localhost", "::1"):
        fail(
            f"[webhook.sources.{source}] callback_url is {callback_url}: echo-callback serves "
            "plain http on this machine (e.g. http://127.0.0.1:8081/callback)",
            2,
        )
    try:
        sock = bind(host, port)
    except StartupError as exc:
        fail(str(exc).replace("[http] port", f"[webhook.sources.{source}] callback_url"))
        raise
    server = uvicorn.Server(
        uvicorn.Config(
            echo_app(signer, parts.path or "/"),
            log_config=None,
            access_log=False,
            lifespan="off",
        )
    )
    print(
        f"listening on {callback_url} for webhook source '{source}' "
        f"({signer.scheme} signatures); Ctrl-C stops",
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it ends
        asyncio.run(server.serve(sockets=[sock]))
