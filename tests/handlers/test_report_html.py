"""`kefu report --format html`: the figures behind the charts, and the page as a browser shows it
(headless Chromium: every chart drawn, no console error, no network request, CJK text readable)."""

from __future__ import annotations

import io
import os
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import Image

from handlers import report_html
from storage import customers, reports
from storage.db import Database
from tests.handlers.test_churn import T0, seeded
from tests.servers import chromium

NOW = T0 + timedelta(days=21, hours=6)
CHARTS = 9
BORDER = (0x2B, 0x6C, 0xB0)  # figure.chart's border colour: only charts have it


async def build(db: Database, language: str) -> str:
    async with db.sessions() as s:
        built = await reports.build(s, None, now=NOW)
        everyone = "全部客户" if language == "zh" else "everyone"
        drawn = await report_html.series(s, None, threshold=60, segments=[(everyone, None)])
    return report_html.page(built, drawn, language)


async def test_series_behind_the_charts(db: Database) -> None:
    churn, ids = await seeded(db)
    await churn.recompute(db, NOW)
    async with db.sessions() as s:
        got = await report_html.series(
            s, None, threshold=60, segments=[("everyone", None), ("none", set())]
        )
    assert got.first_response == [2, 0, 0, 0, 0, 0]
    assert got.complaints_by_week == {"2027-03-01": {"normal": 1}, "2027-03-22": {"high": 1}}
    assert got.resolution == [0, 0, 2, 0, 0, 0]  # both resolved after exactly an hour: 1-4 h
    assert [(w, n) for w, _, n in got.csat_by_week] == [("2027-03-01", 2)]
    assert got.csat_by_week[0][1] == 3.0
    assert got.breaches_by_week == {"2027-03-22": {"first_response": 1}}
    assert got.bands == {"at_risk": 1, "watch": 1, "ok": 3}
    assert got.at_risk_by_segment == [("everyone", 1), ("none", 0)]
    assert [t["customer_id"] for t in got.top] == [ids["angry"]]


def _chart_boxes(png: bytes) -> list[tuple[int, int]]:
    """(top, bottom) of each chart frame along the frames' left edge."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    x = 25  # body margin 24 + the middle of the 3 px border
    runs: list[tuple[int, int]] = []
    start: int | None = None
    for y in range(image.height):
        r, g, b = image.getpixel((x, y))  # type: ignore[misc]
        hit = abs(r - BORDER[0]) < 30 and abs(g - BORDER[1]) < 30 and abs(b - BORDER[2]) < 30
        if hit and start is None:
            start = y
        elif not hit and start is not None:
            if y - start > 100:
                runs.append((start, y))
            start = None
    return runs


def _inked(png: bytes, top: int, bottom: int) -> int:
    """Colours other than white and grey inside a frame: bars, lines, slices."""
    image = Image.open(io.BytesIO(png)).convert("RGB").crop((40, top + 10, 900, bottom - 10))
    colours = image.getcolors(maxcolors=1 << 20) or []
    return sum(n for n, (r, g, b) in colours if max(r, g, b) - min(r, g, b) > 40)


@pytest.mark.skipif(
    chromium.binary() is None, reason="chromium not installed: scripts/test installs it"
)
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_page_in_headless_chromium(db: Database, tmp_path: Path) -> None:
    churn, ids = await seeded(db)
    await churn.recompute(db, NOW)
    async with chromium.Chromium() as browser:
        for language in ("zh", "en"):
            page = tmp_path / f"report-{language}.html"
            page.write_text(await build(db, language), encoding="utf-8")
            url = page.as_uri()
            visit, session = await browser.visit(url)
            try:
                assert visit.requests == [url], "the page loaded something besides itself"
                assert visit.errors() == []
                drawn = await session.evaluate(
                    "[...document.querySelectorAll('figure.chart svg.pygal-chart')].filter(svg => {"
                    " const box = svg.getBoundingClientRect();"
                    " return box.width > 800 && box.height > 300 &&"
                    " svg.querySelectorAll('.plot rect, .plot path, .plot circle').length > 0; "
                    "}).length"
                )
                assert drawn == CHARTS
                if language == "zh":
                    assert await session.evaluate(
                        "document.fonts.check('16px \"WenQuanYi Micro Hei\"', '投诉')"
                    )
                    assert "流失风险" in await session.evaluate("document.body.innerText")
                    assert "王小明" in await session.evaluate("document.body.innerText")
                png = await session.screenshot()
            finally:
                await session.close()
            if os.environ.get("KEFU_REPORT_DEBUG"):
                Path(os.environ["KEFU_REPORT_DEBUG"]).joinpath(f"{language}.png").write_bytes(png)
            boxes = _chart_boxes(png)
            assert len(boxes) == CHARTS
            # An empty chart still has its legend's swatches (about 150 px each): more is data.
            assert all(_inked(png, top, bottom) > 350 for top, bottom in boxes)
            if language == "zh" and os.environ.get("KEFU_REPORT_SCREENSHOT"):
                Path(os.environ["KEFU_REPORT_SCREENSHOT"]).write_bytes(png)

    # A forgotten customer is gone from the page: no name, no row among the most at risk.
    async with db.transaction() as s:
        await customers.forget(s, ids["angry"])
    await churn.recompute(db, NOW)
    text = await build(db, "zh")
    assert "王小明" not in text and f"#{ids['angry']} " not in text
