"""A throwaway Dovecot IMAP server for the tests: its own config in a temp dir, on free ports.

Debian packages: dovecot-core dovecot-imapd (and openssl for the test certificate). Each test asks
for its own mailbox with new_user(), so tests never see each other's mail.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.servers.ports import free_port

NOBODY = "nobody"
USERS = 200


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"dovecot did not open port {port} within {timeout} s")


class DovecotServer:
    def __init__(self, *, idle: bool = True) -> None:
        binary = shutil.which("dovecot") or (
            "/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None
        )
        if binary is None:
            raise RuntimeError(
                "Dovecot is not installed: apt-get install dovecot-core dovecot-imapd"
            )
        self.binary = binary
        self.idle = idle
        self.tmp = Path(tempfile.mkdtemp(prefix="kefu-dovecot-"))
        self.port = free_port()
        self.tls_port = free_port()
        self.users = self.tmp / "users"
        self.users.touch()
        self.mail = self.tmp / "mail"
        self.mail.mkdir()
        self.cert = self.tmp / "cert.pem"
        self.key = self.tmp / "key.pem"
        self._proc: subprocess.Popen[bytes] | None = None
        self._n = 0
        self.root = os.geteuid() == 0
        self.user = NOBODY if self.root else pwd.getpwuid(os.geteuid()).pw_name
        entry = pwd.getpwnam(self.user)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid
        if self.root:
            os.chmod(self.tmp, 0o755)
            shutil.chown(self.mail, self.user, entry.pw_gid)

    def _make_cert(self) -> None:
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-keyout", str(self.key), "-out", str(self.cert),
            ],
            check=True,
            capture_output=True,
        )

    def _config(self) -> Path:
        run = self.tmp / "run"
        lines = [
            "protocols = imap",
            "listen = 127.0.0.1",
            f"base_dir = {run}",
            f"state_dir = {run}/state",
            f"log_path = {self.tmp}/dovecot.log",
            "ssl = yes",
            f"ssl_cert = <{self.cert}",
            f"ssl_key = <{self.key}",
            "disable_plaintext_auth = no",
            "auth_mechanisms = plain login",
            "mail_location = maildir:~/Maildir",
            f"passdb {{\n  driver = passwd-file\n  args = {self.users}\n}}",
            f"userdb {{\n  driver = passwd-file\n  args = {self.users}\n}}",
            "service imap-login {",
            f"  inet_listener imap {{\n    address = 127.0.0.1\n    port = {self.port}\n  }}",
            "  inet_listener imaps "
            f"{{\n    address = 127.0.0.1\n    port = {self.tls_port}\n    ssl = yes\n  }}",
            "" if self.root else "  chroot =",
            "}",
        ]
        if not self.root:
            lines += [
                f"default_internal_user = {self.user}",
                f"default_internal_group = {pwd.getpwnam(self.user).pw_name}",
                f"default_login_user = {self.user}",
                "service anvil {\n  chroot =\n}",
            ]
        if not self.idle:
            # A server without IDLE (RFC 2177): kefu must fall back to polling.
            lines.append(
                "imap_capability = IMAP4rev1 LITERAL+ SASL-IR LOGIN-REFERRALS ID ENABLE "
                "SORT SORT=DISPLAY THREAD=REFERENCES MULTIAPPEND UNSELECT CHILDREN NAMESPACE "
                "UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES "
                "WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE"
            )
        path = self.tmp / "dovecot.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> None:
        if not self.cert.exists():
            self._make_cert()
            self._write_users()
        conf = self._config()
        self._proc = subprocess.Popen(
            [self.binary, "-F", "-c", str(conf)],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_port(self.port)
            _wait_port(self.tls_port)
        except RuntimeError:
            self.stop(cleanup=False)
            log = self.tmp / "dovecot.log"
            raise RuntimeError(
                log.read_text() if log.exists() else "dovecot failed to start"
            ) from None

    def stop(self, *, cleanup: bool = True) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)
            self._proc = None
        if cleanup:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def restart(self) -> None:
        """Kills the server (every client connection drops) and starts it again on the same
        ports."""
        self.stop(cleanup=False)
        # Kill leaves its pid file and sockets behind; a fresh start wants them gone.
        shutil.rmtree(self.tmp / "run", ignore_errors=True)
        self.start()

    def _write_users(self) -> None:
        # All mailboxes exist before the server starts: Dovecot re-reads a changed passwd-file
        # only now and then, so users added later may not log in at once.
        lines = []
        for n in range(1, USERS + 1):
            home = self.mail / f"support{n}"
            home.mkdir(exist_ok=True)
            if self.root:
                shutil.chown(home, self.user, self.gid)
            lines.append(f"support{n}:{{PLAIN}}pw-{n}-secret:{self.uid}:{self.gid}::{home}\n")
        self.users.write_text("".join(lines))

    def new_user(self) -> tuple[str, str]:
        """A fresh mailbox: (username, password)."""
        self._n += 1
        if self._n > USERS:
            raise RuntimeError(f"all {USERS} test mailboxes are used: raise USERS")
        return f"support{self._n}", f"pw-{self._n}-secret"
