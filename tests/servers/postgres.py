"""A throwaway PostgreSQL server for the tests: initdb in a temp dir, pg_ctl on a free port."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.servers.ports import free_port


def find_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


class PostgresServer:
    # The tests' server trades durability for speed; bench/ingest_scale.py runs one as users do.
    TEST_OPTIONS = (
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )

    def __init__(self, *, options: str = TEST_OPTIONS) -> None:
        self.options = options
        bindir = find_bin()
        if bindir is None:
            raise RuntimeError(
                "PostgreSQL is not installed: run scripts/test-deps (apt-get install postgresql)"
            )
        self.bindir = bindir
        self.tmp = Path(tempfile.mkdtemp(prefix="kefu-pg-"))
        self.data = self.tmp / "data"
        self.port = free_port()
        self._counter = 0
        # initdb refuses to run as root: run the server as the postgres user then.
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.tmp, "postgres", "postgres")

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, cwd=self.tmp)

    def start(self) -> None:
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
            "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "-N",
        )
        opts = f"-p {self.port} -k {self.tmp} -c listen_addresses=127.0.0.1 {self.options}"
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.tmp / "server.log"),
            "-w", "-o", opts, "start",
        )

    def create_database(self, name: str | None = None) -> str:
        """A fresh, empty database; returns its SQLAlchemy URL."""
        self._counter += 1
        name = name or f"kefu_{os.getpid()}_{self._counter}"
        self._run(
            str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
            "-q", "-c", f'create database "{name}"',
        )
        return self.url(name)

    def url(self, name: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run(
                str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"
            )
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
