"""A database kefu cannot use gets one line naming it and what to do; relative paths follow
config.toml's folder."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bot.cli import app
from bot.config import load_config
from tests.servers.ports import free_port
from tests.servers.postgres import PostgresServer

COMMANDS = [
    ("db", "upgrade"),
    ("conversations", "list"),
    ("log", "export"),
    ("customers", "show", "1"),
    ("staff", "list"),
    ("audit",),
    ("report",),
    ("campaigns", "report"),
    ("reply", "1", "hello"),
]


def write_config(folder: Path, url: str) -> Path:
    path = folder / "config.toml"
    path.write_text(f'[storage]\nurl = "{url}"\n')
    return path


def kefu(config: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [*args, "--config", str(config)])
    return result.exit_code, result.stdout, result.stderr


def kefu_run(config: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEFU_")}
    return subprocess.run(
        [sys.executable, "-m", "bot", "run", "--config", str(config)],
        cwd=cwd or config.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_one_line(code: int, out: str, err: str, *needles: str) -> None:
    assert code == 1, (out, err)
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def unopenable(tmp_path: Path) -> dict[str, Path]:
    """SQLite paths that even root cannot open (the suite may run as root)."""
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "a-folder.db").mkdir()
    return {
        "folder is a file": tmp_path / "a-file" / "kefu.db",
        "database is a folder": tmp_path / "a-folder.db",
        "read-only file system": Path("/proc/kefu.db"),
    }


@pytest.mark.parametrize(
    "case", ["folder is a file", "database is a folder", "read-only file system"]
)
@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_unopenable_sqlite_is_one_line_naming_the_path(
    tmp_path: Path, case: str, args: tuple[str, ...]
) -> None:
    path = unopenable(tmp_path)[case]
    config = write_config(tmp_path, f"sqlite+aiosqlite:///{path}")
    assert_one_line(*kefu(config, *args), str(path), "[storage] url")


@pytest.mark.parametrize("case", ["folder is a file", "read-only file system"])
def test_run_on_unopenable_sqlite_is_one_line(tmp_path: Path, case: str) -> None:
    path = unopenable(tmp_path)[case]
    config = write_config(tmp_path, f"sqlite+aiosqlite:///{path}")
    config.write_text(config.read_text() + f"[http]\nport = {free_port()}\n")
    done = kefu_run(config)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(path) in errors[0], done.stderr
    assert "kefu.started" not in done.stderr


@pytest.fixture
def read_only_mount(tmp_path: Path) -> Iterator[Path]:
    """A real read-only file system holding an existing kefu database (needs mount rights)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a file system here (needs root in a container that allows it)")
    try:
        config = write_config(tmp_path, f"sqlite+aiosqlite:///{mount}/kefu.db")
        assert kefu(config, "db", "upgrade")[0] == 0
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_existing_database_on_a_read_only_file_system(
    tmp_path: Path, read_only_mount: Path, args: tuple[str, ...]
) -> None:
    config = tmp_path / "config.toml"
    assert_one_line(*kefu(config, *args), str(read_only_mount / "kefu.db"), "writable")


def test_postgres_down_is_one_line_naming_the_url(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://kefu:s3cret@127.0.0.1:{free_port()}/kefu"
    config = write_config(tmp_path, url)
    for args in COMMANDS:
        code, out, err = kefu(config, *args)
        assert_one_line(code, out, err, "PostgreSQL is running", "127.0.0.1")
        assert "s3cret" not in err  # the password in a URL is a secret
    config.write_text(config.read_text() + f"[http]\nport = {free_port()}\n")
    done = kefu_run(config)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "PostgreSQL is running" in done.stderr and "s3cret" not in done.stderr


@pytest.mark.postgres
def test_postgres_wrong_database_or_user(tmp_path: Path, postgres: PostgresServer) -> None:
    good = postgres.create_database()
    base = good.rsplit("/", 1)[0]
    cases = {
        f"{base}/no_such_db": ("no_such_db", "createdb"),
        good.replace("postgres@", "nobody_here@"): ("nobody_here", "user and password"),
    }
    for url, needles in cases.items():
        config = write_config(tmp_path, url)
        for args in (("db", "upgrade"), ("conversations", "list")):
            assert_one_line(*kefu(config, *args), *needles)
        config.write_text(config.read_text() + f"[http]\nport = {free_port()}\n")
        done = kefu_run(config)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert needles[1] in done.stderr


def test_relative_sqlite_path_follows_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "srv" / "kefu"
    home.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = write_config(home, "sqlite+aiosqlite:///data/kefu.db")
    monkeypatch.chdir(elsewhere)
    assert kefu(config, "staff", "add", "--name", "alice")[0] == 0
    code, out, err = kefu(config, "staff", "list")
    assert code == 0 and "alice" in out, err
    assert (home / "data" / "kefu.db").exists()
    assert list(elsewhere.iterdir()) == []


def test_run_uses_the_database_next_to_the_config_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = write_config(home, "sqlite+aiosqlite:///kefu.db")
    config.write_text(config.read_text() + f"[http]\nport = {free_port()}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEFU_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "run", "--config", str(config)],
        cwd=elsewhere,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in iter(proc.stderr.readline, ""):
            if "kefu.started" in line:
                break
        proc.terminate()
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (home / "kefu.db").exists()
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql+asyncpg://kefu@db:abc/kefu", "not a database URL"),
        ("postgresql+asyncpg://kefu@127.0.0.1:99999/kefu", "port 99999"),
        ("postgresql+asyncpg://kefu@db", "name the database"),
        ("sqlite+aiosqlite://", "name the database file"),
        ("mysql://kefu@db/kefu", "use sqlite+aiosqlite:///PATH or postgresql+asyncpg://"),
    ],
)
def test_a_wrong_url_is_a_config_error_naming_it(tmp_path: Path, url: str, message: str) -> None:
    config = write_config(tmp_path, url)
    for args in (("db", "upgrade"), ("staff", "list")):
        code, out, err = kefu(config, *args)
        assert code == 2 and "Traceback" not in out + err
        assert "[storage] url" in err and message in err, err
    done = kefu_run(config)
    assert done.returncode == 2 and "Traceback" not in done.stderr and message in done.stderr


def test_relative_folders_and_files_follow_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "srv" / "kefu"
    (home / "texts" / "en").mkdir(parents=True)
    (home / "texts" / "en" / "greeting_birthday.j2").write_text("Happy birthday from the shop")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = write_config(home, "sqlite+aiosqlite:///kefu.db")
    config.write_text(
        config.read_text()
        + '[email]\nstore_dir = "mail"\nca_file = "certs/ca.pem"\n'
        + '[campaigns]\ntemplate_dir = "texts"\n'
        + f'[complaints]\nextra_cues = ["cues.toml", "{tmp_path / "abs.toml"}"]\n'
    )
    monkeypatch.chdir(elsewhere)
    cfg = load_config(config)
    assert cfg.email.store_dir == str(home / "mail")
    assert cfg.email.ca_file == str(home / "certs" / "ca.pem")
    assert cfg.campaigns.template_dir == str(home / "texts")
    assert cfg.complaints.extra_cues == (str(home / "cues.toml"), str(tmp_path / "abs.toml"))
    # The shipped default ("data/mail") is relative too: next to the file, not the shell.
    plain = tmp_path / "plain"
    plain.mkdir()
    default = load_config(write_config(plain, "sqlite+aiosqlite:///kefu.db"))
    assert default.email.store_dir == str(plain / "data" / "mail")

    # What a user sees: the greeting preview, run from another folder, uses the template beside
    # config.toml.
    config.write_text(config.read_text().replace('extra_cues = ["cues.toml", ', "# "))
    people = home / "people.csv"
    people.write_text(
        "name,email,birthday,language,marketing_consent\nAda,ada@example.com,1990-03-14,en,yes\n"
    )
    assert kefu(config, "customers", "import", str(people))[0] == 0
    code, out, err = kefu(
        config, "campaigns", "preview", "birthday", "--date", "2099-03-14", "--format", "json"
    )
    assert code == 0, err
    assert "Happy birthday from the shop" in out, out
