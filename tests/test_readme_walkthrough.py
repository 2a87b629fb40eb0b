"""The README's first hour, run as written: the commands and the expected output are read from
README.md itself (blocks after `<!-- walkthrough: NAME -->` markers), so the two cannot drift.

Only two things differ from a person at a terminal: the ports (8080 and 8081 may be taken on a
shared machine; both are replaced everywhere by free ones) and the install step, which would
download packages: `.venv` is this test run's own environment, where `pip install -e .` was done.

Blocks named `run` and `echo…` are the long-running processes of the other terminals; starting an
`echo…` block stops the receiver before it with Ctrl-C (SIGINT), as the README says to. A read-only
block that looks at what `kefu run` did in the background (SETTLING) is run again until its expected
lines appear, as a person would look again a moment later.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"<!-- walkthrough: (expect )?([\w-]+) -->\s*\n```(\w+)\n(.*?)\n```", re.S)
INSTALL = "python3 -m venv .venv && .venv/bin/pip install -e . && "
RECEIVER = "echo"
SETTLING = {"dead-list"}
# The one ERROR the walkthrough causes on purpose: the callback refused by a receiver holding the
# wrong secret.
EXPECTED_ERROR = re.compile(
    r" ERROR kefu\.outbox outbox\.send\.dead id=4 channel=webhook error=callback answered 401"
)

pytestmark = pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("openssl") and shutil.which("bash")),
    reason="the README's commands use bash, curl and openssl",
)


def steps() -> list[tuple[bool, str, str]]:
    """(is an expectation, name, text) in the README's order."""
    found = [
        (bool(m.group(1)), m.group(2), m.group(4))
        for m in MARKER.finditer((ROOT / "README.md").read_text(encoding="utf-8"))
    ]
    names = [name for expect, name, _ in found if not expect]
    assert names[:2] == ["run", "echo"]
    assert {"first-message", "reply", "survey", "dead-list", "retry"} <= set(names)
    return found


def matches(expected_line: str, output: str) -> bool:
    """One expected line within one output line: runs of blanks are one blank (table padding
    varies with content), "…" stands for anything."""
    wanted = ".*?".join(re.escape(part) for part in " ".join(expected_line.split()).split("…"))
    return any(re.search(wanted, " ".join(line.split())) for line in output.splitlines())


class Lines:
    """A background process's stdout, line by line, as it arrives."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout
        threading.Thread(target=lambda: [self._queue.put(x) for x in stdout], daemon=True).start()

    def wait_for(self, expected: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not matches(expected, "".join(self.seen)):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"never printed {expected!r}:\n{''.join(self.seen)}")
            try:
                self.seen.append(self._queue.get(timeout=left))
            except queue.Empty:
                continue


@pytest.fixture
def home(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    http, callback = free_port(), free_port()
    ports = {"127.0.0.1:8080": f"127.0.0.1:{http}", "127.0.0.1:8081": f"127.0.0.1:{callback}"}
    config = (ROOT / "config.toml").read_text(encoding="utf-8")
    config = config.replace("port = 8080", f"port = {http}")
    for old, new in ports.items():
        config = config.replace(old, new)
    (tmp_path / "config.toml").write_text(config, encoding="utf-8")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    yield tmp_path, ports


def test_the_readme_walkthrough_works_as_written(home: tuple[Path, dict[str, str]]) -> None:
    folder, ports = home

    def local(text: str) -> str:
        for old, new in ports.items():
            text = text.replace(old, new)
        return text

    env = {k: v for k, v in os.environ.items() if not k.startswith("KEFU_")}
    env["COLUMNS"] = "200"
    background: dict[str, subprocess.Popen[str]] = {}
    streams: dict[str, Lines] = {}
    outputs: dict[str, str] = {}
    commands: dict[str, str] = {}
    run_log = folder / "kefu-run.log"
    try:
        for expect, name, text in steps():
            if expect:
                for line in local(text).splitlines():
                    if name in streams:
                        streams[name].wait_for(line)
                    elif name in SETTLING:
                        outputs[name] = _until_shown(line, commands[name], folder, env)
                    else:
                        assert matches(line, outputs[name]), (name, line, outputs[name])
                continue
            command = commands[name] = local(text)
            if name == "run":
                assert command.startswith(INSTALL), command
                command = command.removeprefix(INSTALL)
                background[name] = subprocess.Popen(
                    ["bash", "-c", command],
                    cwd=folder,
                    env=env,
                    text=True,
                    stdout=subprocess.DEVNULL,
                    stderr=run_log.open("w"),
                    start_new_session=True,
                )
                _wait_started(run_log, background[name])
            elif name.startswith(RECEIVER):
                for other in [n for n in background if n.startswith(RECEIVER)]:
                    _ctrl_c(background.pop(other))
                background[name] = subprocess.Popen(
                    ["bash", "-c", command],
                    cwd=folder,
                    env=env,
                    text=True,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                streams[name] = Lines(background[name])
            else:
                outputs[name] = _run(command, folder, env)
    finally:
        for proc in background.values():
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
                proc.wait(timeout=30)
    log = run_log.read_text(encoding="utf-8")
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert "Traceback" not in log, log
    assert len(errors) == 1 and EXPECTED_ERROR.search(errors[0]), log
    assert "kefu.stopped" in log


def _wait_started(log: Path, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while "kefu.started" not in log.read_text(encoding="utf-8"):
        assert proc.poll() is None, log.read_text(encoding="utf-8")
        assert time.monotonic() < deadline, log.read_text(encoding="utf-8")
        time.sleep(0.05)


def _run(command: str, folder: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=folder,
        env=env,
        text=True,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, (command, done.stdout, done.stderr)
    return done.stdout + done.stderr


def _until_shown(
    expected: str, command: str, folder: Path, env: dict[str, str], timeout: float = 30
) -> str:
    deadline = time.monotonic() + timeout
    while not matches(expected, output := _run(command, folder, env)):
        assert time.monotonic() < deadline, (command, expected, output)
        time.sleep(0.2)
    return output


def _ctrl_c(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=30)
