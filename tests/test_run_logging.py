"""What `kefu run` writes to its log: its own events, an access line per answer, nothing noisy."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers.kefu import signed
from tests.servers.ports import free_port

SECRET = "access-log-secret"


def write_config(folder: Path, port: int) -> Path:
    config = folder / "config.toml"
    config.write_text(
        f'[storage]\nurl = "sqlite+aiosqlite:///{folder}/kefu.db"\n'
        f'[http]\nhost = "127.0.0.1"\nport = {port}\nmax_body_bytes = 1024\n'
        '[webhook.sources.shop]\nsecret_env = "SHOP_SECRET"\n'
    )
    return config


def start(config: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEFU_")}
    return subprocess.Popen(
        [sys.executable, "-m", "bot", "run", "--config", str(config)],
        cwd=config.parent,
        env={**env, "SHOP_SECRET": SECRET},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def read_until(proc: subprocess.Popen[str], needle: str) -> list[str]:
    assert proc.stderr is not None
    seen: list[str] = []
    for line in iter(proc.stderr.readline, ""):
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} never logged:\n{''.join(seen)}")


@pytest.fixture
def taken_port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_a_taken_port_is_one_line_and_no_started_line(tmp_path: Path, taken_port: int) -> None:
    proc = start(write_config(tmp_path, taken_port))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "kefu.started" not in err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert f"127.0.0.1:{taken_port}" in errors[0] and "[http] port" in errors[0]


def test_started_means_the_port_answers(tmp_path: Path) -> None:
    port = free_port()
    proc = start(write_config(tmp_path, port))
    try:
        read_until(proc, "kefu.started")
        # No retry: the line is written only once the server is listening.
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_access_log_and_quiet_third_parties(tmp_path: Path) -> None:
    port = free_port()
    proc = start(write_config(tmp_path, port))
    base = f"http://127.0.0.1:{port}"
    private = "张三的包裹地址 secret-words"
    try:
        startup = read_until(proc, "kefu.started")
        with httpx.Client(base_url=base, timeout=10) as client:
            answers = {
                404: client.post("/webhooks/nosuch", content=b"{}"),
                413: client.post("/webhooks/shop", content=b"x" * 4096),
                422: client.post("/webhooks/shop", **_signed(f'{{"text": "{private}"'.encode())),
                202: client.post(
                    "/webhooks/shop",
                    **_signed(
                        {"id": "m-1", "user": {"id": "c-1", "name": "张三"}, "text": private}
                    ),
                ),
                200: client.post(
                    "/webhooks/shop",
                    **_signed(
                        {"id": "m-1", "user": {"id": "c-1", "name": "张三"}, "text": private}
                    ),
                ),
                401: client.post(
                    "/webhooks/shop", content=b"{}", headers={"X-Kefu-Timestamp": "1"}
                ),
            }
            assert {status: r.status_code for status, r in answers.items()} == {
                s: s for s in answers
            }
    finally:
        proc.terminate()
        _, rest = proc.communicate(timeout=30)
    log = "".join(startup) + rest
    access = [line for line in log.splitlines() if "http.access" in line]
    for status in (404, 413, 422, 202, 200, 401):
        assert any(f"status={status}" in line for line in access), (status, access)
    shop = [line for line in access if "source=shop" in line]
    assert len(shop) == 5 and all(re.search(r"ms=\d+(\.\d+)?", line) for line in shop), access
    assert private not in log and "张三" not in log and "secret-words" not in log
    assert SECRET not in log
    # Third-party chatter stays out at INFO: APScheduler's job lines, uvicorn's start banner.
    assert "apscheduler" not in log.lower(), log
    assert "Uvicorn running" not in log and "Started server process" not in log
    assert "kefu.stopped" in log


def _signed(payload: object) -> dict[str, object]:
    body, headers = signed(
        SECRET, payload if isinstance(payload, bytes) else json.loads(json.dumps(payload))
    )
    return {"content": body, "headers": headers}
