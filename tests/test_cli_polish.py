"""The command line as a person meets it: dates, --version, --config anywhere, help, widths,
--format on listings, and a campaign preview that shows the text before a channel is set up."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bot.cli import app, command

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text('[storage]\nurl = "sqlite+aiosqlite:///kefu.db"\n')
    return path


def kefu(*args: str, columns: int | None = None) -> tuple[int, str, str]:
    env = {"COLUMNS": str(columns)} if columns else {}
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("campaigns", "preview", "birthday", "--date", "2027-02-30"), "--date"),
        (("campaigns", "run", "holiday", "--date", "2027-02-30"), "--date"),
        (("log", "export", "--since", "2027-02-30"), "--since"),
        (("audit", "--since", "2027-02-30"), "--since"),
        (("report", "--since", "2027-02-30T10:00"), "--since"),
        (("campaigns", "report", "--since", "2027-02-30"), "--since"),
    ],
)
def test_a_date_that_does_not_exist_is_named_so(
    config: Path, args: tuple[str, ...], option: str
) -> None:
    code, out, err = kefu(*args, "--config", str(config))
    assert code == 2, out + err
    assert f"{option} has value '2027-02-30" in err
    assert "2027-02-30 does not exist: February 2027 has 28 days" in err
    assert "YYYY-MM-DD" not in err and err.count("\n") == 1


def test_other_date_mistakes(config: Path) -> None:
    code, _, err = kefu(
        "campaigns", "preview", "birthday", "--date", "2027-13-01", "-c", str(config)
    )
    assert code == 2 and "there is no month 13" in err
    code, _, err = kefu("campaigns", "preview", "birthday", "--date", "6 Feb", "-c", str(config))
    assert code == 2 and "use YYYY-MM-DD" in err
    code, _, err = kefu("log", "export", "--since", "2027-02-06T25:00", "-c", str(config))
    assert code == 2 and "not a time of day" in err
    assert (
        kefu("campaigns", "preview", "birthday", "--date", "2028-02-29", "-c", str(config))[0] == 0
    )


def test_version() -> None:
    from importlib.metadata import version

    code, out, _ = kefu("--version")
    assert code == 0 and out.strip() == f"kefu {version('kefu')}"


def test_config_before_or_after_the_command(
    tmp_path: Path, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    second = other / "config.toml"
    second.write_text('[storage]\nurl = "sqlite+aiosqlite:///kefu.db"\n')
    monkeypatch.chdir(tmp_path / "other")
    assert kefu("--config", str(config), "staff", "add", "--name", "before")[0] == 0
    assert kefu("staff", "add", "--name", "after", "--config", str(config))[0] == 0
    # Given twice, the one after the command wins.
    assert kefu("-c", str(config), "staff", "add", "--name", "inner", "-c", str(second))[0] == 0
    code, out, _ = kefu("staff", "list", "--format", "json", "--config", str(config))
    assert code == 0 and [m["name"] for m in json.loads(out)] == ["before", "after"]
    monkeypatch.setenv("KEFU_CONFIG", str(second))
    code, out, _ = kefu("--config", str(config), "staff", "list", "--format", "json")
    assert [m["name"] for m in json.loads(out)] == [
        "before",
        "after",
    ]  # explicit beats $KEFU_CONFIG


def _all_commands(cmd: object, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, sub in getattr(cmd, "commands", {}).items():
        found += _all_commands(sub, (*path, name))
    return found


def test_help_has_plain_placeholders(capsys: pytest.CaptureFixture[str]) -> None:
    root = command()
    paths = _all_commands(root)
    assert ("customers", "import") in paths and len(paths) > 20
    for path in paths:
        with pytest.raises(SystemExit) as done:
            root.main([*path, "--help"], prog_name="kefu")
        assert done.value.code == 0
        text = capsys.readouterr().out
        for noise in ("<bool>", "<str>", "<path>", "<int", "{", "}"):
            assert noise not in text, (path, noise, text)
        body = "\n".join(line for line in text.splitlines() if not line.startswith("Usage:"))
        assert "..." not in body, (path, text)  # command lists are not cut short
        assert all(len(line) <= 80 for line in text.splitlines()), (path, text)
    with pytest.raises(SystemExit):
        root.main(["customers", "import", "--help"], prog_name="kefu")
    text = capsys.readouterr().out
    assert "Usage: kefu customers import [OPTIONS] FILE" in text and "--rejected PATH" in text


def test_report_fits_80_columns_and_leaves_out_empty_tables(config: Path) -> None:
    code, out, err = kefu("report", "-c", str(config), columns=80)
    assert code == 0, err
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), out
    assert "CSAT: average — (0 of 0 surveys answered)" in lines
    assert "SLA breaches: 0" in lines
    assert "breaches ┃" not in out and "score" not in out  # no empty SLA or CSAT table


def test_piped_audit_is_not_cut(config: Path) -> None:
    long = "a-staff-member-with-a-really-long-name-" * 3
    assert kefu("staff", "add", "--name", long, "-c", str(config))[0] == 0
    code, out, _ = kefu("audit", "-c", str(config))  # CliRunner's stdout is a pipe
    assert code == 0 and long in out and "…" not in out


@pytest.mark.parametrize(
    "args",
    [("conversations", "list"), ("staff", "list"), ("audit",), ("campaigns", "report")],
    ids=" ".join,
)
def test_every_listing_has_json_and_csv(config: Path, args: tuple[str, ...]) -> None:
    assert kefu("staff", "add", "--name", "alice", "-c", str(config))[0] == 0
    code, out, err = kefu(*args, "--format", "json", "-c", str(config))
    assert code == 0, err
    data = json.loads(out)
    assert isinstance(data, list)
    code, out, err = kefu(*args, "--format", "csv", "-c", str(config))
    assert code == 0, err
    table = list(csv.reader(io.StringIO(out)))
    assert len(table) == len(data) + 1 and table[0]
    if data:
        assert table[0] == list(data[0])
    code, _, err = kefu(*args, "--format", "xml", "-c", str(config))
    assert code == 2 and "--format has value 'xml'" in err


def test_preview_shows_the_text_where_the_channel_is_off(config: Path) -> None:
    """The default config: email is off. The greeting's words show all the same, with why it
    would not be sent in its own column."""
    people = config.parent / "people.csv"
    people.write_text(
        "name,email,birthday,timezone,language,marketing_consent\n"
        "王小明,xm@example.com,02-06,Asia/Shanghai,zh,是\n"
        "Alice,alice@example.com,1990-02-06,Europe/Berlin,en,yes\n",
        encoding="utf-8",
    )
    assert kefu("customers", "import", str(people), "-c", str(config))[0] == 0
    code, out, err = kefu(
        "campaigns",
        "preview",
        "birthday",
        "--date",
        "2099-02-06",
        "--format",
        "json",
        "-c",
        str(config),
    )
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert "生日快乐" in rows["王小明"]["text"] and "Alice" in rows["Alice"]["text"]
    for row in rows.values():
        assert row["channel"] is None and "email" in row["not_sent_because"]
    code, out, _ = kefu(
        "campaigns",
        "preview",
        "birthday",
        "--date",
        "2099-02-06",
        "-c",
        str(config),
        columns=200,
    )
    assert code == 0 and "not sent because" in out and "生日快乐" in out
    assert "0 greetings, 2 skipped" in out
