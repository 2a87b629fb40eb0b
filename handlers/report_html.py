"""`kefu report --format html`: one self-contained page of charts a support lead reads.

The charts are drawn by pygal into inline SVG when the page is built: the page loads nothing (no
script, font, stylesheet or image from anywhere), so it can be mailed, archived or opened offline.
Text is left to the viewer's fonts, with CJK fonts named first, so Chinese labels read where any
CJK font is installed (Debian: fonts-wqy-microhei or fonts-noto-cjk).

The figures come from the same SQL as `kefu report` (storage/reports.py) plus the series the
charts need (storage/insight_report.py): complaints per week by severity, response and resolution
times in buckets, CSAT per week, breaches per week, customers at risk by segment, per-agent
figures.
"""

from __future__ import annotations

import html
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import pygal
from pygal.style import Style

from handlers import health
from storage.insight_report import BOUNDS, Series, series
from storage.reports import Report

__all__ = ["Series", "series"]

# pygal puts an import hook on sys.meta_path for its map plugins (pygal.maps.*, unused here); the
# hook lacks find_spec, so every later import in the process warns (an error under -W error).
sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "PluginImportFixer"]

FONTS = (
    "'WenQuanYi Micro Hei', 'Noto Sans CJK SC', 'Source Han Sans SC', 'PingFang SC',"
    " 'Microsoft YaHei', sans-serif"
)
# (upper bound in seconds, label en, label zh), for storage.insight_report.BOUNDS in order.
BUCKETS: tuple[tuple[float | None, str, str], ...] = tuple(
    zip(
        BOUNDS,
        ("< 15 min", "15-60 min", "1-4 h", "4-24 h", "1-3 d", "> 3 d"),
        ("< 15 分钟", "15-60 分钟", "1-4 小时", "4-24 小时", "1-3 天", "> 3 天"),
        strict=True,
    )
)

LABELS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Customer care report",
        "generated": "Generated {at} UTC",
        "since": "since {since}",
        "all_time": "all time",
        "complaints": "Complaints per week, by severity",
        "high": "high",
        "normal": "normal",
        "first_response": "First response time (conversations)",
        "resolution": "Resolution time (conversations)",
        "conversations": "conversations",
        "csat": "Satisfaction (CSAT) per week: average score 1-5",
        "average": "average",
        "answers": "answers",
        "sla": "SLA breaches per week",
        "first_response_target": "first response",
        "resolution_target": "resolution",
        "at_risk": "Customers at risk, by segment",
        "bands": "Customers by health band",
        "ok": "ok",
        "watch": "watch",
        "at_risk_band": "at risk",
        "agents": "Per agent",
        "assigned": "assigned",
        "resolved": "resolved",
        "breaches": "SLA breaches",
        "agent_csat": "Per agent: average CSAT",
        "top": "Most at risk",
        "customer": "customer",
        "score": "score",
        "reasons": "reasons",
        "last_contact": "last contact",
        "total_complaints": "complaints",
        "median_first": "median first response",
        "csat_avg": "average CSAT",
        "total_breaches": "SLA breaches",
        "at_risk_count": "customers at risk",
        "everyone": "everyone",
        "agent": "agent",
        "median": "median first response",
    },
    "zh": {
        "title": "客户服务报告",
        "generated": "生成于 {at} UTC",
        "since": "自 {since} 起",
        "all_time": "全部时间",
        "complaints": "每周投诉数（按严重程度）",
        "high": "严重",
        "normal": "一般",
        "first_response": "首次响应时间（会话数）",
        "resolution": "解决时间（会话数）",
        "conversations": "会话",
        "csat": "每周满意度（CSAT）：平均分 1-5",
        "average": "平均分",
        "answers": "答复数",
        "sla": "每周超出服务时限（SLA）次数",
        "first_response_target": "首次响应",
        "resolution_target": "解决",
        "at_risk": "流失风险客户（按客户分群）",
        "bands": "客户健康度分布",
        "ok": "正常",
        "watch": "关注",
        "at_risk_band": "流失风险",
        "agents": "客服人员数据",
        "assigned": "分配",
        "resolved": "已解决",
        "breaches": "超时次数",
        "agent_csat": "客服人员平均满意度",
        "top": "流失风险最高的客户",
        "customer": "客户",
        "score": "风险分",
        "reasons": "原因",
        "last_contact": "最近联系",
        "total_complaints": "投诉",
        "median_first": "首次响应中位数",
        "csat_avg": "平均满意度",
        "total_breaches": "超时次数",
        "at_risk_count": "流失风险客户",
        "everyone": "全部客户",
        "agent": "客服",
        "median": "首次响应中位数",
    },
}


# --- drawing ---------------------------------------------------------------------------------

STYLE = Style(
    font_family=FONTS,
    background="#ffffff",
    plot_background="#ffffff",
    foreground="#333333",
    foreground_strong="#111111",
    foreground_subtle="#888888",
    colors=("#d1495b", "#edae49", "#00798c", "#30638e", "#003d5b", "#8d96a3"),
    title_font_size=18,
    label_font_size=13,
    major_label_font_size=13,
    legend_font_size=13,
    value_font_size=12,
)

# Health bands: ok, watch, at risk.
BANDS = Style(**{**STYLE.to_dict(), "colors": ("#00798c", "#edae49", "#d1495b")})


def _chart(kind: type[pygal.graph.graph.Graph], title: str, **options: Any) -> Any:
    settings: dict[str, Any] = {
        "title": title,
        "style": STYLE,
        "js": [],  # pygal's tooltips script comes from the network: none
        "disable_xml_declaration": True,
        "width": 900,
        "height": 380,
        "show_legend": True,
        "legend_at_bottom": True,
        "print_values": False,
        "no_data_text": "—",
        "x_label_rotation": 30,
    }
    return kind(**(settings | options))


def _counts(highest: float) -> list[int]:
    """Whole-number ticks for a count axis (pygal would label 0.1, 0.2 ... for a count of 1)."""
    top = max(int(highest), 1)
    step = max(1, -(-top // 8))
    return list(range(0, top + step, step))


def _weekly(
    title: str, by_week: Mapping[str, Mapping[str, int]], stacks: Sequence[tuple[str, str]]
) -> str:
    """Counts per week as stacked bars: one stack per (key, label) of `stacks`."""
    weeks = sorted(by_week)
    c = _chart(
        pygal.StackedBar,
        title,
        y_labels=_counts(max((sum(v.values()) for v in by_week.values()), default=1)),
    )
    c.x_labels = weeks
    for key, label in stacks:
        c.add(label, [by_week[w].get(key, 0) for w in weeks])
    return str(c.render(is_unicode=True))


def charts(report: Report, s: Series, language: str) -> list[tuple[str, str]]:
    """(id, inline SVG) of every chart, in page order."""
    t = LABELS[language]
    drawn: list[tuple[str, str]] = []

    by_severity = [(sev, t[sev]) for sev in ("high", "normal")]
    drawn.append(("complaints", _weekly(t["complaints"], s.complaints_by_week, by_severity)))

    labels = [b[2] if language == "zh" else b[1] for b in BUCKETS]
    for key in ("first_response", "resolution"):
        c = _chart(pygal.Bar, t[key], y_labels=_counts(max(getattr(s, key), default=1)))
        c.x_labels = labels
        c.add(t["conversations"], getattr(s, key))
        drawn.append((key, c.render(is_unicode=True)))

    c = _chart(
        pygal.Line,
        t["csat"],
        range=(1, 5),
        secondary_range=(0, max([n for _, _, n in s.csat_by_week] or [1])),
    )
    c.x_labels = [w for w, _, _ in s.csat_by_week]
    c.add(t["average"], [avg for _, avg, _ in s.csat_by_week])
    c.add(t["answers"], [n for _, _, n in s.csat_by_week], secondary=True)
    drawn.append(("csat", c.render(is_unicode=True)))

    by_target = [(target, t[f"{target}_target"]) for target in ("first_response", "resolution")]
    drawn.append(("sla", _weekly(t["sla"], s.breaches_by_week, by_target)))

    c = _chart(
        pygal.HorizontalBar,
        t["at_risk"],
        show_legend=False,
        y_labels=_counts(max((n for _, n in s.at_risk_by_segment), default=1)),
    )
    c.x_labels = [name for name, _ in s.at_risk_by_segment]
    c.add(t["at_risk_band"], [n for _, n in s.at_risk_by_segment])
    drawn.append(("at_risk", c.render(is_unicode=True)))

    c = _chart(pygal.Pie, t["bands"], inner_radius=0.45, style=BANDS)
    for band, label in (("ok", t["ok"]), ("watch", t["watch"]), ("at_risk", t["at_risk_band"])):
        c.add(label, s.bands.get(band, 0))
    drawn.append(("bands", c.render(is_unicode=True)))

    agents = report.agents
    c = _chart(
        pygal.Bar,
        t["agents"],
        y_labels=_counts(
            max((max(a["assigned"], a["resolved"], a["sla_breaches"]) for a in agents), default=1)
        ),
    )
    c.x_labels = [a["name"] for a in agents]
    c.add(t["assigned"], [a["assigned"] for a in agents])
    c.add(t["resolved"], [a["resolved"] for a in agents])
    c.add(t["breaches"], [a["sla_breaches"] for a in agents])
    drawn.append(("agents", c.render(is_unicode=True)))

    c = _chart(pygal.HorizontalBar, t["agent_csat"], range=(0, 5), show_legend=False)
    c.x_labels = [a["name"] for a in agents]
    c.add(t["csat_avg"], [a["csat_average"] for a in agents])
    drawn.append(("agent_csat", c.render(is_unicode=True)))
    return drawn


CSS = (
    """
body{font-family:FONTS;margin:24px;color:#222;background:#f4f5f7}
h1{margin:0 0 4px}
.meta{color:#666;margin-bottom:16px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:16px}
.card{background:#fff;border-radius:6px;padding:12px 16px;min-width:150px}
.card b{display:block;font-size:26px}
figure.chart{background:#fff;border:3px solid #2b6cb0;border-radius:6px;margin:0 0 16px;
 padding:8px;width:900px}
figure.chart svg{display:block;width:900px;height:380px}
table{border-collapse:collapse;background:#fff;width:918px}
th,td{border-bottom:1px solid #ddd;padding:6px 8px;text-align:left;vertical-align:top}
""".replace("FONTS", FONTS)
)


def page(report: Report, s: Series, language: str) -> str:
    t = LABELS[language]
    esc = html.escape
    median = report.response_times.get("first_response", {}).get("median_seconds")
    cards = [
        (t["total_complaints"], str(report.complaints.get("total", 0))),
        (t["median_first"], _duration(median, language)),
        (
            t["csat_avg"],
            str(report.csat.get("average") if report.csat.get("average") is not None else "—"),
        ),
        (t["total_breaches"], str(report.sla.get("breaches", 0))),
        (t["at_risk_count"], str(s.bands.get("at_risk", 0))),
    ]
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="{"zh-CN" if language == "zh" else "en"}"><head><meta charset="utf-8">',
        # Nothing may load from anywhere: the policy makes a stray reference fail visibly.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:; script-src 'unsafe-inline'\">",
        f"<title>{esc(t['title'])}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(t['title'])}</h1>",
        '<div class="meta">'
        + esc(t["generated"].format(at=f"{report.generated_at:%Y-%m-%d %H:%M}"))
        + " · "
        + esc(
            t["since"].format(since=f"{report.since:%Y-%m-%d}") if report.since else t["all_time"]
        )
        + "</div>",
        '<div class="cards">'
        + "".join(f'<div class="card"><b>{esc(v)}</b>{esc(k)}</div>' for k, v in cards)
        + "</div>",
    ]
    for chart_id, drawn in charts(report, s, language):
        svg = _COMMENT.sub("", drawn)  # pygal's credits, with URLs a reader might take for requests
        parts.append(f'<figure class="chart" id="chart-{chart_id}">{svg}</figure>')
    parts.append(
        f"<h2>{esc(t['top'])}</h2><table><tr><th>{esc(t['customer'])}</th><th>{esc(t['score'])}</th>"
        f"<th>{esc(t['reasons'])}</th><th>{esc(t['last_contact'])}</th></tr>"
    )
    for row in s.top:
        who = f"#{row['customer_id']} {row['name'] or ''}".strip()
        reasons = "<br>".join(esc(r) for r in health.explain_all(row["reasons"], language, 3))
        last = f"{row['last_contact']:%Y-%m-%d}" if row["last_contact"] else "—"
        parts.append(
            f"<tr><td>{esc(who)}</td><td>{row['score']}</td><td>{reasons}</td><td>{last}</td></tr>"
        )
    parts.append("</table></body></html>")
    return "\n".join(parts)


_COMMENT = re.compile(r"<!--.*?-->", re.S)


def _duration(seconds: float | None, language: str) -> str:
    if seconds is None:
        return "—"
    minutes = seconds / 60
    if minutes < 60:
        return f"{minutes:.0f} {'分钟' if language == 'zh' else 'min'}"
    hours = minutes / 60
    if hours < 48:
        return f"{hours:.1f} {'小时' if language == 'zh' else 'h'}"
    return f"{hours / 24:.1f} {'天' if language == 'zh' else 'd'}"
