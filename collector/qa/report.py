"""Coverage reports as people read them: terminal text, and HTML with inline SVG charts.

The HTML comes in two forms from one renderer: a fragment, which the live page
fetches and shows in its Coverage tab, and a whole document (`maidian coverage
--format html`), which is the fragment with the stylesheet inlined, so the file
opens anywhere with no other file and nothing from the internet. Every value
that came from events or the plan is escaped here: the live page inserts the
fragment as it is.

The terminal text lines up columns by display width, counting CJK characters
as two columns, so business-line titles such as 股票交易 do not push the table
out of line.
"""

from __future__ import annotations

import html
import unicodedata
from collections.abc import Iterable, Sequence
from importlib import resources

from maidian.collector.qa.coverage import CoverageReport, EventCoverage, LineCoverage, PropertyPresence

__all__ = ["render_html", "render_html_fragment", "render_text", "stylesheet"]

# Bars in the charts, in SVG user units (pixels at 100% zoom).
_BAR_W = 320
_BAR_H = 16
_LABEL_W = 220
_MINI_W = 60


def stylesheet() -> str:
    """The report's CSS, shipped in the package (qa/assets/report.css); the live page links the same file."""
    return resources.files("maidian.collector.qa").joinpath("assets/report.css").read_text("utf-8")


def _pct(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.1f}%"


def _n(count: int) -> str:
    return f"{count:,}"


# -- text ---------------------------------------------------------------------------------


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _cell(text: str, width: int, *, right: bool = False) -> str:
    pad = " " * max(0, width - _width(text))
    return pad + text if right else text + pad


def _table(rows: Sequence[Sequence[str]], right: Iterable[int] = ()) -> list[str]:
    aligned = set(right)
    widths = [max(_width(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(_cell(c, widths[i], right=i in aligned) for i, c in enumerate(row)).rstrip() for row in rows]


def _scope_text(report: CoverageReport) -> str:
    s = report.scope
    parts = [s.source]
    if s.tag is not None:
        parts.append(f"tag {s.tag}")
    if s.since_ms is not None or s.until_ms is not None:
        parts.append(f"time {s.since_ms if s.since_ms is not None else '…'} to {s.until_ms or '…'} (epoch ms)")
    return " · ".join(parts)


def _reasons_text(ev: EventCoverage) -> str:
    return "; ".join(f"{r.rule} {r.path or '/'} ×{r.count}" for r in ev.reasons)


def _properties_text(props: Sequence[PropertyPresence]) -> str:
    shown = [f"{p.name}{'' if p.declared else '?'} {_pct(p.rate)}" for p in props]
    return " · ".join(shown)


def render_text(report: CoverageReport) -> str:
    """The report for a terminal."""
    out = [
        f"Coverage of {report.plan_name} {report.plan_version}",
        f"  {_scope_text(report)}",
        f"  {_n(report.seen)} events: {_n(report.accepted)} accepted, {_n(report.invalid)} invalid "
        f"({_pct(report.invalid_rate)})",
        f"  planned events seen: {report.expected_seen} of {report.expected} ({_pct(report.coverage)}); "
        f"never seen: {len(report.never_seen)}; seen but not planned: {len(report.unplanned)}",
        "",
    ]
    rows = [["business line", "", "seen/expected", "coverage", "events", "invalid"]]
    for line in report.lines:
        rows.append(
            [
                line.prefix,
                line.title,
                f"{line.expected_seen}/{line.expected}",
                _pct(line.coverage),
                _n(line.seen),
                _pct(line.invalid_rate),
            ]
        )
    out += _table(rows, right=(2, 3, 4, 5))
    for line in report.lines:
        out += ["", f"{line.prefix} {line.title}".rstrip() + f": {line.expected_seen} of {line.expected} seen"]
        seen = [e for e in line.events if e.seen]
        if seen:
            rows = [["  event", "seen", "invalid", "top reasons"]]
            rows += [[f"  {e.name}", _n(e.seen), _pct(e.invalid_rate), _reasons_text(e)] for e in seen]
            out += _table(rows, right=(1, 2))
            for e in seen:
                if e.properties:
                    out.append(f"    {e.name}: {_properties_text(e.properties)}")
        if line.never_seen:
            out.append(f"  never seen ({len(line.never_seen)}): {', '.join(line.never_seen)}")
    if report.unplanned:
        out += ["", "seen but not planned:"]
        rows = [["  event", "seen", "invalid", "top reasons"]]
        rows += [[f"  {e.name}", _n(e.seen), _pct(e.invalid_rate), _reasons_text(e)] for e in report.unplanned]
        out += _table(rows, right=(1, 2))
    if report.other_types:
        kinds = ", ".join(f"{k} {v['accepted'] + v['invalid']}" for k, v in report.other_types.items())
        out += ["", f"other event types: {kinds}"]
    if report.malformed:
        out.append(f"malformed events (not a map): {report.malformed}")
    return "\n".join(out) + "\n"


# -- HTML ---------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _bar_chart(title: str, rows: Sequence[tuple[str, float | None, str]], kind: str) -> str:
    """A horizontal bar chart: one (label, fraction 0..1, value text) per row."""
    height = _BAR_H + 8
    total_h = height * len(rows) + 4
    width = _LABEL_W + _BAR_W + 90
    parts = [
        f'<svg class="md-chart md-chart-{kind}" role="img" aria-label="{_e(title)}" '
        f'width="{width}" height="{total_h}" viewBox="0 0 {width} {total_h}">',
        f"<title>{_e(title)}</title>",
    ]
    for i, (label, fraction, value) in enumerate(rows):
        y = i * height + 2
        w = 0 if fraction is None else round(max(0.0, min(1.0, fraction)) * _BAR_W, 1)
        parts.append(
            f'<text class="md-label" x="0" y="{y + _BAR_H - 3}">{_e(label)}</text>'
            f'<rect class="md-track" x="{_LABEL_W}" y="{y}" width="{_BAR_W}" height="{_BAR_H}" rx="3"/>'
            f'<rect class="md-fill" x="{_LABEL_W}" y="{y}" width="{w}" height="{_BAR_H}" rx="3"/>'
            f'<text class="md-value" x="{_LABEL_W + _BAR_W + 8}" y="{y + _BAR_H - 3}">{_e(value)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _mini_bar(rate: float | None, kind: str = "fill") -> str:
    w = 0 if rate is None else round(rate * _MINI_W, 1)
    return (
        f'<svg class="md-mini" width="{_MINI_W}" height="8" viewBox="0 0 {_MINI_W} 8" aria-hidden="true">'
        f'<rect class="md-track" width="{_MINI_W}" height="8" rx="2"/>'
        f'<rect class="md-{kind}" width="{w}" height="8" rx="2"/></svg>'
    )


def _reasons_html(ev: EventCoverage) -> str:
    if not ev.reasons:
        return ""
    items = "".join(
        f'<li><code class="md-rule">{_e(r.rule)}</code> <code>{_e(r.path or "/")}</code> '
        f"<span>{_e(r.message)}</span> <b>×{r.count}</b></li>"
        for r in ev.reasons
    )
    return f'<ul class="md-reasons">{items}</ul>'


def _properties_html(props: Sequence[PropertyPresence]) -> str:
    if not props:
        return ""
    items = []
    for p in props:
        flags = ("md-req" if p.required else "") + ("" if p.declared else " md-undeclared")
        items.append(
            f'<li class="{flags.strip()}">{_mini_bar(p.rate)} <code>{_e(p.name)}</code> '
            f"<span>{_pct(p.rate)}</span></li>"
        )
    return f'<ul class="md-props">{"".join(items)}</ul>'


def _events_table(events: Sequence[EventCoverage]) -> str:
    head = (
        "<thead><tr><th>event</th><th>seen</th><th>invalid</th><th>top reasons</th>"
        "<th>properties present</th></tr></thead>"
    )
    rows = []
    for ev in events:
        bad = " md-has-invalid" if ev.invalid else ""
        rows.append(
            f'<tr class="md-event{bad}" data-event="{_e(ev.name)}"><td><code>{_e(ev.name)}</code>'
            f"{'<small> server</small>' if ev.trigger == 'server' else ''}</td>"
            f'<td class="md-num">{_n(ev.seen)}</td>'
            f'<td class="md-num">{_pct(ev.invalid_rate)}</td>'
            f"<td>{_reasons_html(ev)}</td><td>{_properties_html(ev.properties)}</td></tr>"
        )
    return f'<table class="md-events">{head}<tbody>{"".join(rows)}</tbody></table>'


def _line_html(line: LineCoverage) -> str:
    seen = [e for e in line.events if e.seen]
    never = ""
    if line.never_seen:
        names = "".join(f"<li><code>{_e(n)}</code></li>" for n in line.never_seen)
        never = f'<div class="md-never"><h4>Never seen ({len(line.never_seen)})</h4><ul>{names}</ul></div>'
    table = _events_table(seen) if seen else '<p class="md-empty">No event of this line was seen.</p>'
    return (
        f'<details class="md-line" data-line="{_e(line.prefix)}"{" open" if seen else ""}>'
        f"<summary><code>{_e(line.prefix)}</code> {_e(line.title)} — "
        f"{line.expected_seen} of {line.expected} seen · {_n(line.seen)} events · "
        f"{_pct(line.invalid_rate)} invalid</summary>{table}{never}</details>"
    )


def render_html_fragment(report: CoverageReport) -> str:
    """The report as an HTML fragment (a `<section>`), every value escaped."""
    s = report.scope
    scope = [f"<span>{_e(s.source)}</span>"]
    if s.tag is not None:
        scope.append(f'<span>tag <code class="md-tag">{_e(s.tag)}</code></span>')
    if s.since_ms is not None or s.until_ms is not None:
        scope.append(f"<span>time {_e(s.since_ms or '…')} – {_e(s.until_ms or '…')} (epoch ms)</span>")
    cards = [
        (
            f"{report.expected_seen} / {report.expected}",
            f"planned events seen ({_pct(report.coverage)})",
            "md-cov-card",
        ),
        (_n(report.seen), "events", ""),
        (_pct(report.invalid_rate), f"invalid ({_n(report.invalid)})", "md-bad" if report.invalid else ""),
        (str(len(report.never_seen)), "planned, never seen", "md-warn" if report.never_seen else ""),
        (str(len(report.unplanned)), "seen, not planned", "md-warn" if report.unplanned else ""),
    ]
    card_html = "".join(
        f'<div class="md-card {cls}" data-card="{i}"><b>{_e(big)}</b><span>{_e(small)}</span></div>'
        for i, (big, small, cls) in enumerate(cards)
    )
    coverage_rows = [
        (f"{line.prefix} {line.title}".strip(), line.coverage, f"{line.expected_seen}/{line.expected}")
        for line in report.lines
    ]
    invalid_rows = [
        (f"{line.prefix} {line.title}".strip(), line.invalid_rate, _pct(line.invalid_rate)) for line in report.lines
    ]
    parts = [
        '<section class="md-coverage">',
        f"<h2>Coverage of {_e(report.plan_name)} <small>{_e(report.plan_version)}</small></h2>",
        f'<p class="md-scope">{" · ".join(scope)}</p>',
        f'<div class="md-cards">{card_html}</div>',
        '<div class="md-charts"><figure><figcaption>Planned events seen, by business line</figcaption>',
        _bar_chart("Planned events seen, by business line", coverage_rows, "coverage"),
        "</figure><figure><figcaption>Invalid events, by business line</figcaption>",
        _bar_chart("Invalid events, by business line", invalid_rows, "invalid"),
        "</figure></div>",
        "<h3>By business line</h3>",
        *(_line_html(line) for line in report.lines),
    ]
    if report.unplanned:
        parts += ['<h3>Seen but not planned</h3><div class="md-unplanned">', _events_table(report.unplanned), "</div>"]
    if report.other_types:
        items = "".join(
            f"<li><code>{_e(k)}</code> {v['accepted'] + v['invalid']} ({v['invalid']} invalid)</li>"
            for k, v in report.other_types.items()
        )
        parts.append(f'<h3>Other event types</h3><ul class="md-types">{items}</ul>')
    parts.append("</section>")
    return "".join(parts)


def render_html(report: CoverageReport) -> str:
    """A self-contained HTML document: the fragment with the stylesheet inlined; nothing else is loaded."""
    title = f"Coverage of {report.plan_name} {report.plan_version}"
    return (
        '<!DOCTYPE html>\n<html lang="zh-CN"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>\n{stylesheet()}</style></head>"
        f'<body class="md-report">{render_html_fragment(report)}</body></html>\n'
    )
