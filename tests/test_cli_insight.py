"""`kefu customers at-risk|rescore` and `kefu report --format html` on a seeded history."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

from storage.db import Database
from tests.handlers.test_churn import seeded
from tests.test_cli import kefu


def setup(tmp_path: Path, language: str = "en") -> tuple[Path, dict[str, int]]:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[storage]\nurl = "sqlite+aiosqlite:///{tmp_path}/kefu.db"\n[insight]\nlanguage = '
        f'"{language}"\n'
    )

    async def go() -> dict[str, int]:
        db = Database(f"sqlite+aiosqlite:///{tmp_path}/kefu.db")
        await db.upgrade()
        _, ids = await seeded(db)
        await db.dispose()
        return ids

    return config, asyncio.run(go())


def test_at_risk_formats_and_roles(tmp_path: Path) -> None:
    config, ids = setup(tmp_path)
    code, out, _ = kefu(config, "customers", "rescore")
    assert code == 0 and "scored 5 customers" in out
    code, out, _ = kefu(config, "customers", "at-risk", "--format", "json", "--min-score", "1")
    assert code == 0
    rows = json.loads(out)
    assert rows[0]["customer_id"] == ids["angry"] and rows[0]["name"] == "王小明"
    assert rows[0]["owner"] == "amy" and rows[0]["conversation_id"] is not None
    assert any("high-severity complaint" in r for r in rows[0]["reasons"])
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    code, out, _ = kefu(
        config, "customers", "at-risk", "--format", "csv", "--language", "zh", "--limit", "1"
    )
    table = list(csv.reader(io.StringIO(out)))
    assert code == 0 and table[0][:3] == ["customer_id", "name", "score"] and len(table) == 2
    assert "高风险投诉" in table[1][3]
    code, out, _ = kefu(config, "customers", "at-risk")
    assert code == 0 and "王小明" in out
    code, _, err = kefu(config, "customers", "at-risk", "--format", "xml")
    assert code == 2 and "--format has value 'xml'" in err
    assert kefu(config, "staff", "add", "--name", "amy2")[0] == 0
    code, _, err = kefu(config, "customers", "at-risk", "--as", "amy2")
    assert code == 1 and "needs role lead" in err


def test_report_html_written(tmp_path: Path) -> None:
    config, _ = setup(tmp_path, "zh")
    kefu(config, "customers", "rescore")
    target = tmp_path / "report.html"
    code, _, _ = kefu(config, "report", "--format", "html", "--out", str(target))
    assert code == 0 and target.exists()
    text = target.read_text(encoding="utf-8")
    assert text.count('<figure class="chart"') == 9 and "客户服务报告" in text
    assert (
        "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
    )
    code, _, err = kefu(config, "report", "--format", "html", "--out", str(tmp_path))
    assert code == 2 and "that is a folder" in err


def test_segments_commands(tmp_path: Path) -> None:
    config, ids = setup(tmp_path)
    config.write_text(
        config.read_text() + '[insight.segments.unhappy]\nband = ["watch", "at_risk"]\n'
        '[insight.segments.quiet_ones]\nactivity = "silent"\ndays = 1\n'
    )
    # From the log: read as of today, the seeded history (in 2027) has not happened yet.
    assert kefu(config, "customers", "rescore", "--from-log")[0] == 0
    code, out, _ = kefu(config, "segments", "list", "--format", "json")
    assert code == 0
    listed = {r["name"]: r for r in json.loads(out)}
    assert listed["unhappy"]["definition"] == "band=watch|at_risk"
    assert listed["quiet_ones"]["customers"] == 5  # the seeded history is in 2027; "now" is earlier
    code, out, _ = kefu(config, "segments", "list", "--format", "csv")
    assert code == 0, out
    table = list(csv.reader(io.StringIO(out)))
    assert table[0] == ["name", "definition", "customers"]
    assert {r[0]: r[1:] for r in table[1:]} == {
        "unhappy": ["band=watch|at_risk", str(listed["unhappy"]["customers"])],
        "quiet_ones": [listed["quiet_ones"]["definition"], "5"],
    }
    code, out, _ = kefu(config, "segments", "show", "unhappy", "--format", "csv")
    rows = list(csv.reader(io.StringIO(out)))
    assert code == 0 and {int(r[0]) for r in rows[1:]} == {ids["angry"]}
    code, out, _ = kefu(config, "customers", "at-risk", "--segment", "unhappy", "--format", "json")
    assert code == 0 and [r["customer_id"] for r in json.loads(out)] == [ids["angry"]]
    code, _, err = kefu(config, "customers", "at-risk", "--segment", "nope")
    assert code == 2 and "no segment 'nope'" in err and "unhappy" in err
    code, _, err = kefu(config, "segments", "show", "nope")
    assert code == 2 and "no segment 'nope'" in err
