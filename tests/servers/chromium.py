"""Headless Chromium driven over the Chrome DevTools Protocol: open a page, record every network
request, console message and uncaught exception, evaluate JavaScript, take a full-page screenshot.

Debian's `chromium` package (scripts/test installs it); tests skip without it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

BINARY_NAMES = ("chromium", "chromium-browser", "google-chrome")


def binary() -> str | None:
    for name in BINARY_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageVisit:
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    console: list[dict[str, Any]] = field(default_factory=list)  # console API calls and log entries
    exceptions: list[dict[str, Any]] = field(default_factory=list)

    def errors(self) -> list[str]:
        found = [json.dumps(e)[:300] for e in self.exceptions]
        for entry in self.console:
            if entry.get("level") in ("error", "warning") or entry.get("type") in (
                "error",
                "assert",
                "warning",
            ):
                found.append(json.dumps(entry)[:300])
        return found


class Chromium:
    def __init__(self) -> None:
        exe = binary()
        if exe is None:
            raise RuntimeError(
                "chromium is not installed (scripts/test installs Debian's chromium)"
            )
        self.exe = exe
        self.profile = tempfile.mkdtemp(prefix="kefu-chromium-")
        self.proc: subprocess.Popen[bytes] | None = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> Chromium:
        self.proc = subprocess.Popen(
            [
                self.exe,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        port_file = Path(self.profile) / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("chromium did not open its DevTools port")
        self.port = int(port_file.read_text().splitlines()[0])
        self.http = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)

    async def visit(
        self, url: str, *, width: int = 1000, height: int = 900
    ) -> tuple[PageVisit, Any]:
        """Opens `url` in a fresh tab; returns the record and a live session for evaluate()."""
        async with self.http.put(f"http://127.0.0.1:{self.port}/json/new?about:blank") as answer:
            target = await answer.json()
        ws = await self.http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        session = _Session(ws, self._ids)
        visit = PageVisit()
        session.listeners.append(lambda m: _record(visit, m))
        for method in ("Network.enable", "Runtime.enable", "Log.enable", "Page.enable"):
            await session.call(method)
        await session.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        loaded = session.wait_for("Page.loadEventFired")
        await session.call("Page.navigate", {"url": url})
        await asyncio.wait_for(loaded, timeout=30)
        await asyncio.sleep(0.2)  # late console messages of the load
        return visit, session


def _record(visit: PageVisit, message: dict[str, Any]) -> None:
    method, params = message.get("method"), message.get("params", {})
    if method == "Network.requestWillBeSent":
        visit.requests.append(params["request"]["url"])
    elif method == "Runtime.consoleAPICalled":
        visit.console.append({"type": params.get("type"), "args": params.get("args")})
    elif method == "Log.entryAdded":
        visit.console.append(params.get("entry", {}))
    elif method == "Runtime.exceptionThrown":
        visit.exceptions.append(params.get("exceptionDetails", {}))


class _Session:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, ids: itertools.count[int]) -> None:
        self.ws = ws
        self.ids = ids
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.waiters: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self.listeners: list[Any] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw.data)
            if "id" in message and message["id"] in self.pending:
                self.pending.pop(message["id"]).set_result(message)
                continue
            for listener in self.listeners:
                listener(message)
            for future in self.waiters.pop(message.get("method", ""), []):
                if not future.done():
                    future.set_result(message)

    def wait_for(self, method: str) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(method, []).append(future)
        return future

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        n = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[n] = future
        await self.ws.send_str(json.dumps({"id": n, "method": method, "params": params or {}}))
        answer = await asyncio.wait_for(future, timeout=30)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        return result.get("result", {}).get("value")

    async def screenshot(self) -> bytes:
        """The whole page, not only the viewport."""
        metrics = await self.call("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = await self.call(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {
                    "x": 0,
                    "y": 0,
                    "width": size["width"],
                    "height": size["height"],
                    "scale": 1,
                },
            },
        )
        return base64.b64decode(shot["data"])

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()
