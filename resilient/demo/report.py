"""The results: a terminal table and a self-contained HTML report with inline SVG charts."""

from __future__ import annotations

import html
import math
import platform
import sys
import textwrap
import time
from collections.abc import Sequence
from typing import Any

from resilient.demo.configs import CONFIGS
from resilient.demo.metrics import (
    Series,
    Summary,
    Target,
    bucket_width,
    check_targets,
    headlines,
    inconclusive,
    rerun_hint,
    series,
    summarize,
)
from resilient.demo.runner import ScenarioRun

__all__ = ["COLORS", "PLAIN_WIDTH", "render_html", "summary_rows", "terminal_table"]

COLORS = {
    "plain": "#6b7280",
    "naive": "#d97706",
    "standard": "#2563eb",
    "budget": "#0891b2",
    "microsoft": "#9333ea",
    "stale-cache": "#059669",
}
_FALLBACK_COLORS = ["#dc2626", "#65a30d", "#c026d3", "#475569", "#a16207"]
BREAKER_COLORS = {"closed": "#16a34a", "open": "#dc2626", "half_open": "#f59e0b", "none": "#e5e7eb"}


def _color(key: str, index: int) -> str:
    return COLORS.get(key, _FALLBACK_COLORS[index % len(_FALLBACK_COLORS)])


def fmt_ms(seconds: float) -> str:
    """A latency for a table: ``"8.1 ms"``, ``"1.52 s"``; ``"-"`` if unknown."""
    if math.isnan(seconds):
        return "-"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 0.1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds * 1000:.1f} ms"


def _fmt_ratio(value: float, digits: int = 2) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def summary_rows(runs: Sequence[ScenarioRun]) -> list[tuple[str, str, Summary]]:
    """(scenario title, configuration key, summary) for every run."""
    return [(r.scenario.title, c.config.key, summarize(c)) for r in runs for c in r.runs]


# -- terminal -----------------------------------------------------------------


#: Longest line of the plain-text summary (logs and CI consoles).
PLAIN_WIDTH = 100
#: Below this many columns the terminal summary lists what the policies did under its table.
_WIDE = 110


def _figures(s: Summary) -> list[str]:
    return [
        s.label,
        f"{s.success:.1%}" if not math.isnan(s.success) else "-",
        fmt_ms(s.p50),
        fmt_ms(s.p99),
        fmt_ms(s.max),
        _fmt_ratio(s.amplification),
    ]


_HEADERS = ["configuration", "success", "p50", "p99", "max", "ampl."]
_ACTIONS = "what the policies did"


def _scenario_head(run: ScenarioRun) -> str:
    lag = f"load-generator lag p99 {fmt_ms(run.loop_lag_p99)}"
    if inconclusive(run):
        lag += ": INCONCLUSIVE"
    return f"{run.scenario.title} ({lag})"


def _target_line(t: Target) -> str:
    word = "MISSED" if t.verdict == "missed" else t.verdict
    return f"target {word}: {t.config} {t.describe()}"


def _tally(targets: Sequence[Target], runs: Sequence[ScenarioRun]) -> list[str]:
    if not targets:
        return []
    counts = {v: sum(1 for t in targets if t.verdict == v) for v in ("met", "missed", "inconclusive")}
    lines = ["targets: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n)]
    lagging = [r for r in runs if inconclusive(r)]
    if lagging:
        worst = max(lagging, key=lambda r: r.loop_lag_p99)
        lines.append(f"{len(lagging)} scenario(s) inconclusive: {rerun_hint(worst)}")
    return lines


def terminal_table(runs: Sequence[ScenarioRun], *, rich_console: Any = None) -> str:
    """Print (with rich when given a console) or return the final summary.

    Per scenario: its title, the one line of what resilience bought, a table
    of figures per configuration and the targets; then the tally of targets.
    The plain text keeps every line within :data:`PLAIN_WIDTH` columns.
    """
    targets = check_targets(runs)
    if rich_console is not None:
        _rich_summary(runs, targets, rich_console)
        return ""
    out: list[str] = []
    for run in runs:
        rows = [(s, _figures(s)) for s in (summarize(c) for c in run.runs)]
        widths = [max(len(h), *(len(f[i]) for s, f in rows if not s.note)) for i, h in enumerate(_HEADERS)]
        left = sum(widths) + 2 * len(widths) + 2
        room = PLAIN_WIDTH - left
        out += ["", _scenario_head(run)]
        if line := headlines(run):
            out.append(textwrap.fill(line, PLAIN_WIDTH, initial_indent="  ", subsequent_indent="    "))
        # What the policies did goes in its column when every row's fits, else under each row.
        inline = all(len(s.actions()) <= room for s, _ in rows if not s.note)
        header = "  " + "  ".join(h.ljust(w) for h, w in zip(_HEADERS, widths, strict=True))
        out.append(header + "  " + _ACTIONS if inline else header.rstrip())
        for s, figures in rows:
            if s.note:
                out.append(
                    textwrap.fill(
                        f"{s.label}: skipped: {s.note}", PLAIN_WIDTH, initial_indent="  ", subsequent_indent="    "
                    )
                )
                continue
            cells = "  " + "  ".join(
                (c.ljust(w) if i == 0 else c.rjust(w)) for i, (c, w) in enumerate(zip(figures, widths, strict=True))
            )
            if inline:
                out.append(cells + "  " + s.actions())
            else:
                out.append(cells.rstrip())
                if s.actions() != "-":
                    out.append(textwrap.fill(s.actions(), PLAIN_WIDTH, initial_indent="    ", subsequent_indent="    "))
        for t in targets:
            if t.scenario == run.scenario.name:
                out.append(textwrap.fill(_target_line(t), PLAIN_WIDTH, initial_indent="  ", subsequent_indent="    "))
    out += ["", *(textwrap.fill(line, PLAIN_WIDTH, subsequent_indent="  ") for line in _tally(targets, runs))]
    return "\n".join(out).strip("\n")


def _hanging(text: Any, indent: int = 2) -> Any:
    """``text`` whose wrapped lines start ``indent`` columns in (rich has no hanging indent)."""
    from rich.table import Table

    grid = Table.grid()
    grid.add_column(width=indent, no_wrap=True)
    grid.add_column()
    grid.add_row("", text)
    return grid


def _rich_summary(runs: Sequence[ScenarioRun], targets: Sequence[Target], console: Any) -> None:
    from rich import box
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    wide = console.width >= _WIDE
    styles = {"met": "green", "missed": "red", "inconclusive": "yellow"}
    for run in runs:
        console.print()
        console.print(Text(_scenario_head(run), style="bold yellow" if inconclusive(run) else "bold"))
        if line := headlines(run):
            console.print(_hanging(Text(line), 2))
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold")
        for h in _HEADERS:
            table.add_column(h, justify="left" if h == "configuration" else "right", no_wrap=True)
        if wide:
            table.add_column(_ACTIONS)
        listed: list[tuple[str, str]] = []
        for c in run.runs:
            s = summarize(c)
            if s.note:
                table.add_row(s.label, "skipped", *[""] * (len(_HEADERS) - 2 + wide))
                listed.append((s.label, s.note))
                continue
            table.add_row(*_figures(s), *([s.actions()] if wide else []))
            if not wide and s.actions() != "-":
                listed.append((s.label, s.actions()))
        console.print(Padding(table, (0, 0, 0, 2)))
        if listed and not wide:
            console.print(Text(f"  {_ACTIONS}:", style="dim"))
            for label, what in listed:
                console.print(Padding(_hanging(Text(f"{label}: {what}", style="dim"), 2), (0, 0, 0, 2)))
        for t in targets:
            if t.scenario == run.scenario.name:
                word = t.verdict if t.verdict != "missed" else "MISSED"
                text = Text("target ")
                text.append(word, style=styles[t.verdict])
                text.append(f": {t.config} {t.describe()}")
                console.print(_hanging(text, 2))
    tally = _tally(targets, runs)
    if tally:
        console.print()
        for line in tally:
            console.print(_hanging(Text(line), 2))


# -- SVG charts ---------------------------------------------------------------

_W, _H = 560, 200
_ML, _MR, _MT, _MB = 52, 12, 24, 28


def _nice_ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    v = first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 10))
        v += step
    return ticks


def _fmt_tick(v: float, unit: str) -> str:
    if unit == "s":
        return fmt_ms(v).replace(".0 ms", " ms")
    if unit == "%":
        return f"{v * 100:.0f}%"
    return f"{v:g}"


def line_chart(
    title: str,
    lines: Sequence[tuple[str, str, Sequence[float]]],
    *,
    seconds: float,
    step: float = 1.0,
    unit: str = "",
    y_max: float | None = None,
    log: bool = False,
    shade: tuple[float, float] | None = None,
    reference: tuple[str, float] | None = None,
) -> str:
    """An SVG line chart: one point per ``step`` seconds; NaN breaks a line.

    ``lines`` holds (label, color, values); ``shade`` greys the fault phase
    (seconds); ``reference`` draws a dashed horizontal line with a label.
    """
    finite = [v for _, _, vals in lines for v in vals if not math.isnan(v) and (v > 0 or not log)]
    if reference is not None:
        finite.append(reference[1])
    pw, ph = _W - _ML - _MR, _H - _MT - _MB
    if log:
        lo_v = min(finite) if finite else 0.001
        hi_v = max(finite) if finite else 1.0
        lo = 10 ** math.floor(math.log10(max(lo_v, 1e-4)))
        hi = 10 ** math.ceil(math.log10(max(hi_v, lo * 10)))
        ticks = [10**e for e in range(round(math.log10(lo)), round(math.log10(hi)) + 1)]

        def y_of(v: float) -> float:
            v = max(v, lo)
            return _MT + ph - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * ph
    else:
        lo = 0.0
        hi = y_max if y_max is not None else (max(finite) * 1.1 if finite else 1.0)
        hi = hi or 1.0
        ticks = _nice_ticks(lo, hi)

        def y_of(v: float) -> float:
            return _MT + ph - (v - lo) / (hi - lo) * ph

    def x_of(sec: float) -> float:
        return _ML + sec / max(seconds, 1e-9) * pw

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" '
        f'role="img" class="chart"><title>{html.escape(title)}</title>',
        f'<text x="{_ML}" y="15" class="ct">{html.escape(title)}</text>',
    ]
    if shade is not None:
        x0, x1 = x_of(shade[0]), x_of(shade[1])
        out.append(f'<rect x="{x0:.1f}" y="{_MT}" width="{x1 - x0:.1f}" height="{ph}" fill="#fde2e2" opacity="0.6"/>')
    for t in ticks:
        y = y_of(t)
        out.append(f'<line x1="{_ML}" x2="{_ML + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        out.append(f'<text x="{_ML - 4}" y="{y + 3:.1f}" class="yt">{html.escape(_fmt_tick(t, unit))}</text>')
    for sec in _nice_ticks(0, seconds, 6):
        x = x_of(sec)
        out.append(f'<text x="{x:.1f}" y="{_MT + ph + 14}" class="xt">{sec:g}s</text>')
    out.append(f'<rect x="{_ML}" y="{_MT}" width="{pw}" height="{ph}" fill="none" stroke="#9ca3af"/>')
    if reference is not None:
        y = y_of(reference[1])
        out.append(
            f'<line x1="{_ML}" x2="{_ML + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#111827" stroke-dasharray="4 3"/>'
        )
        out.append(f'<text x="{_ML + pw - 2}" y="{y - 3:.1f}" class="rt">{html.escape(reference[0])}</text>')
    for label, color, values in lines:
        segment: list[str] = []
        segments: list[list[str]] = []
        for i, v in enumerate(values):
            if math.isnan(v) or (log and v <= 0):
                if segment:
                    segments.append(segment)
                segment = []
                continue
            segment.append(f"{x_of((i + 0.5) * step):.1f},{y_of(min(v, hi)):.1f}")
        if segment:
            segments.append(segment)
        for seg in segments:
            if len(seg) == 1:
                cx, cy = seg[0].split(",")
                out.append(
                    f'<circle cx="{cx}" cy="{cy}" r="2" fill="{color}"><title>{html.escape(label)}</title></circle>'
                )
            else:
                out.append(
                    f'<polyline points="{" ".join(seg)}" fill="none" stroke="{color}" stroke-width="1.8" '
                    f'stroke-linejoin="round"><title>{html.escape(label)}</title></polyline>'
                )
    out.append("</svg>")
    return "".join(out)


def breaker_chart(rows: Sequence[tuple[str, bool, Sequence[tuple[float, str]]]], *, seconds: float) -> str:
    """Circuit state over time, one strip per configuration: (label, has_breaker, changes)."""
    strip, gap = 16, 6
    height = _MT + len(rows) * (strip + gap) + 24
    left = 150
    pw = _W * 2 - left - _MR

    def x_of(sec: float) -> float:
        return left + max(0.0, min(sec, seconds)) / max(seconds, 1e-9) * pw

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W * 2} {height}" width="{_W * 2}" '
        f'height="{height}" role="img" class="chart breaker"><title>Circuit breaker state</title>',
        f'<text x="{left}" y="15" class="ct">Circuit breaker state (green closed, red open, amber half-open)</text>',
    ]
    for i, (label, has_breaker, changes) in enumerate(rows):
        y = _MT + i * (strip + gap)
        out.append(f'<text x="{left - 6}" y="{y + 12}" class="yt">{html.escape(label)}</text>')
        if not has_breaker:
            out.append(
                f'<rect x="{left}" y="{y}" width="{pw}" height="{strip}" fill="{BREAKER_COLORS["none"]}"/>'
                f'<text x="{left + 6}" y="{y + 12}" class="nt">no breaker</text>'
            )
            continue
        state, at = "closed", 0.0
        for when, new in [*changes, (seconds, "end")]:
            x0, x1 = x_of(at), x_of(when)
            if x1 > x0:
                out.append(
                    f'<rect x="{x0:.1f}" y="{y}" width="{x1 - x0:.1f}" height="{strip}" '
                    f'fill="{BREAKER_COLORS[state]}"><title>{state} from {at:.2f} s</title></rect>'
                )
            state, at = new, max(at, when)
    axis_y = _MT + len(rows) * (strip + gap) + 10
    for sec in _nice_ticks(0, seconds, 10):
        out.append(f'<text x="{x_of(sec):.1f}" y="{axis_y}" class="xt">{sec:g}s</text>')
    out.append("</svg>")
    return "".join(out)


# -- HTML ---------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#111827;
padding:0 16px;line-height:1.45}
h1{margin-bottom:4px}h2{margin-top:36px;border-bottom:1px solid #e5e7eb;padding-bottom:4px}
.meta{color:#6b7280;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:10px 0}
th,td{padding:4px 10px;border-bottom:1px solid #e5e7eb;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.sep td{border-top:2px solid #9ca3af}
.charts{display:grid;grid-template-columns:repeat(2,560px);gap:8px 16px}
.chart .ct{font-size:12px;font-weight:600;fill:#111827}
.chart .yt{font-size:10px;fill:#6b7280;text-anchor:end}
.chart .xt{font-size:10px;fill:#6b7280;text-anchor:middle}
.chart .rt{font-size:10px;fill:#111827;text-anchor:end}
.chart .nt{font-size:10px;fill:#6b7280}
.legend span{display:inline-block;margin-right:16px;font-size:13px}
.legend i{display:inline-block;width:14px;height:4px;margin-right:5px;vertical-align:middle}
.met{color:#15803d;font-weight:600}.missed{color:#b91c1c;font-weight:600}.inconclusive{color:#92400e;font-weight:600}
.note{color:#6b7280;font-size:13px}
code{background:#f3f4f6;padding:1px 4px;border-radius:3px}
"""


def _summary_table(rows: Sequence[tuple[str, str, Summary]], *, with_scenario: bool) -> str:
    head = (
        "<tr>"
        + ("<th>scenario</th>" if with_scenario else "")
        + (
            "<th>configuration</th><th class=n>success</th><th class=n>p50</th><th class=n>p99</th>"
            "<th class=n>max</th><th class=n>p99 of successes</th><th class=n>load ampl.</th>"
            "<th class=n>upstream req.</th><th>what the policies did</th></tr>"
        )
    )
    body = []
    last = None
    for scenario, key, s in rows:
        sep = ' class="sep"' if with_scenario and last is not None and scenario != last else ""
        cells = f"<td>{html.escape(scenario if scenario != last else '')}</td>" if with_scenario else ""
        last = scenario
        swatch = f'<i style="display:inline-block;width:10px;height:10px;background:{_color(key, 0)}"></i> '
        if s.note:
            body.append(
                f"<tr{sep}>{cells}<td>{swatch}{html.escape(s.label)}</td>"
                f'<td colspan="8" class="note">skipped: {html.escape(s.note)}</td></tr>'
            )
            continue
        body.append(
            f"<tr{sep}>{cells}<td>{swatch}{html.escape(s.label)}</td>"
            f"<td class=n>{s.success:.1%}</td><td class=n>{fmt_ms(s.p50)}</td><td class=n>{fmt_ms(s.p99)}</td>"
            f"<td class=n>{fmt_ms(s.max)}</td><td class=n>{fmt_ms(s.p99_ok)}</td>"
            f"<td class=n>{_fmt_ratio(s.amplification)}</td><td class=n>{s.upstream}</td>"
            f"<td>{html.escape(s.actions())}</td></tr>"
        )
    return f'<table class="summary">{head}{"".join(body)}</table>'


def _targets_html(targets: Sequence[Target]) -> str:
    if not targets:
        return "<p class=note>No target applies to the scenarios and configurations that ran.</p>"
    items = []
    for t in targets:
        cls = word = t.verdict
        items.append(
            f'<li><span class="{cls}">{word}</span> {html.escape(t.scenario)} / {html.escape(t.config)}: '
            f"{html.escape(t.describe())}</li>"
        )
    return "<ul>" + "".join(items) + "</ul>"


def _scenario_html(run: ScenarioRun) -> str:
    sc = run.scenario
    seconds = run.duration
    step = bucket_width(run.duration)
    per = "per second" if step == 1 else f"per {step:g} s"
    ran = [(i, c) for i, c in enumerate(run.runs) if not c.skipped]
    sers: list[tuple[str, str, Series]] = [
        (c.config.key, _color(c.config.key, i), series(c, run.duration, step)) for i, c in ran
    ]
    shade = (sc.fault.start * run.duration, sc.fault.end * run.duration)
    legend = "".join(f'<span><i style="background:{color}"></i>{html.escape(s.label)}</span>' for _, color, s in sers)
    charts = [
        line_chart(
            f"Success rate {per}",
            [(s.label, color, s.success) for _, color, s in sers],
            seconds=seconds,
            step=step,
            unit="%",
            y_max=1.0,
            shade=shade,
        ),
        line_chart(
            "Requests received by the upstream per second",
            [(s.label, color, s.upstream) for _, color, s in sers],
            seconds=seconds,
            step=step,
            shade=shade,
            reference=(f"client rate {run.rate:g}/s", run.rate),
        ),
        line_chart(
            f"Latency p50 {per} (log scale)",
            [(s.label, color, s.p50) for _, color, s in sers],
            seconds=seconds,
            step=step,
            unit="s",
            log=True,
            shade=shade,
        ),
        line_chart(
            f"Latency p99 {per} (log scale)",
            [(s.label, color, s.p99) for _, color, s in sers],
            seconds=seconds,
            step=step,
            unit="s",
            log=True,
            shade=shade,
        ),
    ]
    strips = breaker_chart(
        [(c.config.label, c.config.breaker, c.breaker) for _, c in ran],
        seconds=seconds,
    )
    rows = [(sc.title, c.config.key, summarize(c)) for c in run.runs]
    return (
        f'<section id="{html.escape(sc.name)}"><h2>{html.escape(sc.title)}</h2>'
        f"<p>{html.escape(sc.description)} The shaded band is the fault phase "
        f"({shade[0]:.1f} s to {shade[1]:.1f} s: {html.escape(sc.fault.label)}). "
        f'<span class="note">Event-loop lag of the load generator: p99 {fmt_ms(run.loop_lag_p99)}, '
        f"max {fmt_ms(run.loop_lag_max)}.</span></p>"
        f"<p><b>What to look at:</b> {html.escape(sc.look_for)}</p>"
        f"{_summary_table(rows, with_scenario=False)}"
        f'<div class="legend">{legend}</div>'
        f'<div class="charts">{"".join(charts)}</div>{strips}</section>'
    )


def render_html(runs: Sequence[ScenarioRun], *, rate: float, duration: float, seed: int, wall: float) -> str:
    """The whole report as one self-contained HTML document."""
    targets = check_targets(runs)
    configs = "".join(f"<li><b>{html.escape(c.label)}</b>: {html.escape(c.description)}</li>" for c in CONFIGS)
    sections = "".join(_scenario_html(r) for r in runs)
    from resilient import __version__

    meta = (
        f"resilient {html.escape(__version__)} · Python {platform.python_version()} · "
        f"{html.escape(platform.platform())} · generated {time.strftime('%Y-%m-%d %H:%M:%S')} · "
        f"{rate:g} calls/s per configuration, {duration:g} s per scenario, seed {seed}, "
        f"total {wall:.0f} s"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>resilient demo report</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body>
<h1>resilient demo report</h1>
<p class="meta">{meta}</p>
<p>A flaky upstream (uvicorn on 127.0.0.1) plays scripted faults. Every client configuration receives the same
open-loop load ({rate:g} calls per second, each call its own task started on a fixed schedule, latency measured from
the scheduled time) against its own instance of the upstream, at the same time.</p>
<h2>Targets</h2>{_targets_html(targets)}
<h2>All results</h2>
{_summary_table(summary_rows(runs), with_scenario=True)}
<h2>How to read this</h2>
<ul>
<li><b>success</b>: calls that got a good answer (from the upstream or, for the cache, a fresh or stale copy).</li>
<li><b>p50 / p99 / max</b>: latency of all calls, failures included, from the time the call was due.</li>
<li><b>load amplification</b>: requests the upstream received per call made; retries raise it, an open breaker
and a cache lower it. Above 1 during an outage means the clients are adding to the fire.</li>
<li><b>what the policies did</b>: retries, breaker openings, calls rejected without calling the upstream (fail
fast), stale answers served by the cache, timeouts, counted from <code>resilient.events</code>.</li>
</ul>
<p>Configurations:</p><ul>{configs}</ul>
{sections}
<p class="note">Generated by <code>resilient demo</code> ({html.escape(" ".join(sys.argv[1:]) or "defaults")}).</p>
</body></html>
"""
