"""Reports as one offline HTML page: inline SVG charts and tables, no script, no network.

Promises:
- the page loads nothing: no script, no stylesheet or font from elsewhere;
  charts are inline SVG, so it opens from a file, a mail or an air-gapped
  desk and prints as it shows.
- text is escaped once, here; CJK labels (event names, channel names, 抖音,
  华为应用市场) are drawn with the system's CJK fonts (the font stack names
  the common ones on Linux, macOS and Windows).
- a funnel draws one bar per step with its persons and its conversion from
  the previous step; retention draws a heat map, groups down and days across,
  darker for higher rates; every report also shows its rows as a table.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from html import escape
from typing import Any, Final

from .report import Report

__all__ = ["render"]

_FONTS: Final = (
    "'Noto Sans CJK SC', 'Noto Sans SC', 'Source Han Sans SC', 'WenQuanYi Zen Hei', 'WenQuanYi Micro Hei',"
    " 'PingFang SC', 'Hiragino Sans GB', 'Microsoft YaHei', system-ui, sans-serif"
)
_STYLE: Final = f"""
body {{ font-family: {_FONTS}; margin: 24px; color: #1f2933; background: #fff; }}
h1 {{ font-size: 22px; margin: 0 0 4px; }}
h2 {{ font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #d9e2ec; padding-bottom: 4px; }}
p.meta {{ color: #52606d; font-size: 13px; margin: 0 0 8px; }}
table {{ border-collapse: collapse; font-size: 13px; margin: 8px 0; }}
th, td {{ border: 1px solid #d9e2ec; padding: 3px 8px; text-align: right; }}
th {{ background: #f0f4f8; }}
td.text, th.text {{ text-align: left; }}
svg text {{ font-family: {_FONTS}; }}
"""


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


def _pct(value: Any) -> str:
    return "–" if value is None else f"{float(value) * 100:.1f}%"


def _table(report: Report, limit: int = 500) -> str:
    head = "".join(
        f'<th class="{"text" if _is_text(report, i) else ""}">{escape(c)}</th>' for i, c in enumerate(report.columns)
    )
    rows = []
    for r in report.rows[:limit]:
        cells = "".join(f'<td class="{"text" if isinstance(v, str) else ""}">{escape(_cell(v))}</td>' for v in r)
        rows.append(f"<tr>{cells}</tr>")
    more = f'<p class="meta">{len(report.rows) - limit} more rows not shown</p>' if len(report.rows) > limit else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{more}"


def _is_text(report: Report, i: int) -> bool:
    return any(isinstance(r[i], str) for r in report.rows[:20])


def _funnel_svg(report: Report) -> str:
    rows = report.records()
    if not rows:
        return ""
    top = max(int(r["persons"]) for r in rows) or 1
    label_w, bar_w, row_h = 300, 460, 30
    height = row_h * len(rows) + 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 180}" height="{height}"'
        f' role="img" aria-label="{escape(report.title)}">'
    ]
    for i, r in enumerate(rows):
        y = 5 + i * row_h
        w = max(1, round(bar_w * int(r["persons"]) / top))
        label = f"{r['step']}. {r['event']}"
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 19}" text-anchor="end" font-size="13">{escape(label)}</text>'
            f'<rect x="{label_w}" y="{y + 4}" width="{w}" height="{row_h - 8}" fill="#3e7cb1"/>'
            f'<text x="{label_w + w + 6}" y="{y + 19}" font-size="12">{int(r["persons"]):,}'
            f" · {_pct(r['from_previous'])}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _heat_colour(rate: float | None) -> str:
    if rate is None:
        return "#f5f7fa"
    level = max(0.0, min(1.0, float(rate)))
    light = round(95 - 60 * level)
    return f"hsl(210, 60%, {light}%)"


def _retention_svg(report: Report) -> str:
    days = [c for c in report.columns if c.endswith("_rate")]
    if not report.rows or not days:
        return ""
    label_w, cell_w, cell_h = 220, 64, 24
    rows = report.rows[:40]
    width = label_w + cell_w * len(days) + 10
    height = cell_h * (len(rows) + 1) + 10
    index = {c: i for i, c in enumerate(report.columns)}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        f' role="img" aria-label="{escape(report.title)}">'
    ]
    for j, d in enumerate(days):
        x = label_w + j * cell_w
        parts.append(
            f'<text x="{x + cell_w / 2}" y="16" text-anchor="middle" font-size="12">'
            f"{escape(d.removesuffix('_rate').replace('day', 'D+'))}</text>"
        )
    for i, r in enumerate(rows):
        y = cell_h * (i + 1)
        label = f"{_cell(r[0])} ({_cell(r[1])})"
        parts.append(f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end" font-size="12">{escape(label)}</text>')
        for j, d in enumerate(days):
            rate = r[index[d]]
            x = label_w + j * cell_w
            ink = "#fff" if rate is not None and float(rate) > 0.5 else "#1f2933"
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell_w - 2}" height="{cell_h - 2}" fill="{_heat_colour(rate)}"/>'
                f'<text x="{x + cell_w / 2}" y="{y + 16}" text-anchor="middle" font-size="11" fill="{ink}">'
                f"{_pct(rate)}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


def _campaign_svg(report: Report) -> str:
    rows = report.records()
    if not rows:
        return ""
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="520" height="90" role="img">']
    top = max((float(r["rate"] or 0) for r in rows), default=0) or 1
    for i, r in enumerate(rows):
        y = 8 + i * 38
        w = max(1, round(300 * float(r["rate"] or 0) / top))
        parts.append(
            f'<text x="110" y="{y + 20}" text-anchor="end" font-size="13">{escape(str(r["group"]))}</text>'
            f'<rect x="120" y="{y + 4}" width="{w}" height="24" fill="{"#d9822b" if i == 0 else "#9aa5b1"}"/>'
            f'<text x="{126 + w}" y="{y + 20}" font-size="12">{_pct(r["rate"])} of {int(r["persons"]):,}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _section(report: Report) -> str:
    params = ", ".join(f"{k}={v}" for k, v in report.params.items() if v not in (None, [], {}, ""))
    chart = {"funnel": _funnel_svg, "retention": _retention_svg, "campaign": _campaign_svg}.get(report.kind)
    svg = f'<div class="chart">{chart(report)}</div>' if chart is not None else ""
    return (
        f'<section class="report" data-kind="{escape(report.kind)}"><h2>{escape(report.title)}</h2>'
        f'<p class="meta">{escape(params)}</p>{svg}{_table(report)}</section>'
    )


def render(reports: Sequence[Report], *, title: str = "maidian report", generated: str | None = None) -> str:
    """One self-contained HTML page with every report, in order."""
    when = generated or dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = "".join(_section(r) for r in reports)
    return (
        '<!DOCTYPE html><html lang="zh-CN"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f'<body><h1>{escape(title)}</h1><p class="meta">generated {escape(when)}</p>{body}</body></html>\n'
    )
