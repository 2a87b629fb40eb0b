"""`kefu run` as a real operating-system process, as a user starts it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx


class KefuProcess:
    def __init__(
        self, workdir: Path, port: int, env: dict[str, str], config: str = "config.toml"
    ) -> None:
        self.workdir = workdir
        self.port = port
        self.env = env
        self.config = workdir / config
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"kefu-{port}.log"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "run", "--config", str(self.config)],
            cwd=self.workdir,
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
            start_new_session=True,
        )

    async def ready(self, timeout: float = 30) -> None:
        async with httpx.AsyncClient() as client:
            for _ in range(int(timeout / 0.05)):
                assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
                try:
                    if (
                        await client.get(f"http://127.0.0.1:{self.port}/healthz")
                    ).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        raise TimeoutError(self.log.read_text())

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def ensure_stopped(self) -> None:
        """For the test's teardown: a failed test must not leave kefu running."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
