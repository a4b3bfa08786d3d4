"""The results: a terminal table and a self-contained HTML report with inline SVG charts."""

from __future__ import annotations

import html
import math
import platform
import sys
import textwrap
import time
from collections.abc import Collection, Sequence
from typing import Any

from resilient.demo.configs import CONFIGS
from resilient.demo.metrics import (
    JUDGED,
    LAG_LIMIT,
    Series,
    Summary,
    Target,
    bucket_width,
    check_targets,
    fault_window,
    headlines,
    inconclusive,
    rerun_hint,
    series,
    summarize,
)
from resilient.demo.runner import ConfigRun, ScenarioRun

__all__ = [
    "COLORS",
    "OKABE_ITO",
    "PLAIN_WIDTH",
    "TimeAxis",
    "breaker_chart",
    "fmt_ms",
    "line_chart",
    "palette",
    "render_html",
    "summary_rows",
    "terminal_table",
]

#: The Okabe-Ito palette (Okabe & Ito 2008): eight colours that stay apart
#: under every common colour-vision deficiency.
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky blue": "#56B4E9",
    "bluish green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish purple": "#CC79A7",
}
#: One colour per configuration of the demo, the same in every chart and table.
COLORS = {
    "plain": OKABE_ITO["black"],
    "naive": OKABE_ITO["vermillion"],
    "standard": OKABE_ITO["blue"],
    "budget": OKABE_ITO["bluish green"],
    "microsoft": OKABE_ITO["reddish purple"],
    "stale-cache": OKABE_ITO["orange"],
}
# Yellow last: thin yellow lines are hard to see on white.
_SPARE = [
    OKABE_ITO[c] for c in ("sky blue", "orange", "bluish green", "reddish purple", "vermillion", "blue", "yellow")
]
#: More configurations than colours: the rest are grey.
_OVERFLOW = "#7F7F7F"
#: The configuration drawn dashed: the reference the others are compared with.
_REFERENCE = "plain"


def palette(keys: Sequence[str]) -> dict[str, str]:
    """A colour per configuration key: :data:`COLORS` for the demo's, unused Okabe-Ito colours for others."""
    used = {COLORS[k] for k in keys if k in COLORS}
    spare = [c for c in _SPARE if c not in used]
    out: dict[str, str] = {}
    for key in keys:
        if key not in out:
            out[key] = COLORS.get(key) or (spare.pop(0) if spare else _OVERFLOW)
    return out


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
            console.print(Text(line))


# -- SVG charts ---------------------------------------------------------------

# Every chart of a scenario is drawn on the same canvas width with the same
# plot margins, so that one second is the same pixel column in all of them:
# stacked, they read as one timeline. The left margin holds the title (or the
# breaker's row labels) and the y ticks.
_W = 1100
_ML, _MR = 172, 18
_H, _MT, _MB = 172, 12, 22
_FAULT_FILL = "#EBEBEB"
_GRID = "#E5E7EB"


class TimeAxis:
    """The x mapping shared by a scenario's charts: ``seconds`` of run onto ``[left, right]`` pixels."""

    def __init__(self, seconds: float, left: float = _ML, right: float = _W - _MR) -> None:
        self.seconds = max(seconds, 1e-9)
        self.left = left
        self.right = right

    def x(self, sec: float) -> float:
        """The pixel column of ``sec`` seconds since the start (clamped to the run)."""
        return self.left + max(0.0, min(sec, self.seconds)) / self.seconds * (self.right - self.left)

    def ticks(self) -> list[float]:
        """Tick positions, seconds."""
        return _nice_ticks(0, self.seconds, 10)

    def attrs(self) -> str:
        """SVG attributes that state the mapping (read by tests and by anyone aligning charts)."""
        return f'data-x0="{self.left:g}" data-x1="{self.right:g}" data-t0="0" data-t1="{self.seconds:g}"'

    def grid(self, top: float, bottom: float, *, labels: bool = True) -> list[str]:
        """Vertical grid lines at the ticks and their labels under ``bottom``."""
        out = []
        for sec in self.ticks():
            x = self.x(sec)
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top:.1f}" y2="{bottom:.1f}" stroke="{_GRID}"/>')
            if labels:
                out.append(f'<text x="{x:.1f}" y="{bottom + 14:.1f}" class="xt">{sec:g} s</text>')
        return out

    def shade(self, span: tuple[float, float] | None, top: float, height: float) -> list[str]:
        """The fault phase as a grey band."""
        if span is None:
            return []
        x0, x1 = self.x(span[0]), self.x(span[1])
        return [
            f'<rect x="{x0:.1f}" y="{top:.1f}" width="{x1 - x0:.1f}" height="{height:.1f}" fill="{_FAULT_FILL}" '
            'class="fault"><title>fault phase</title></rect>'
        ]


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
        return f"{v:g} s" if v >= 1 else fmt_ms(v).replace(".0 ms", " ms")
    if unit == "%":
        return f"{v * 100:.0f}%"
    return f"{v:g}"


def _title_lines(title: str, width: int = 22) -> list[str]:
    return textwrap.wrap(title, width) or [title]


def _left_title(title: str, top: float) -> str:
    """The chart's title in the left margin, a line per ~22 characters."""
    lines = _title_lines(title)
    spans = "".join(
        f'<tspan x="0" dy="{0 if i == 0 else 15}">{html.escape(line)}</tspan>' for i, line in enumerate(lines)
    )
    return f'<text x="0" y="{top + 12:.1f}" class="ct">{spans}</text>'


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
    dashed: Collection[str] = (),
) -> str:
    """An SVG line chart: one point per ``step`` seconds; NaN breaks a line.

    ``lines`` holds (label, color, values); ``shade`` greys the fault phase
    (seconds); ``reference`` draws a dotted horizontal line with a label;
    the lines whose label is in ``dashed`` are drawn dashed. The x axis is a
    :class:`TimeAxis` of ``seconds``: the same in every chart of a scenario.
    """
    finite = [v for _, _, vals in lines for v in vals if not math.isnan(v) and (v > 0 or not log)]
    if reference is not None:
        finite.append(reference[1])
    axis = TimeAxis(seconds)
    top, ph = _MT, _H - _MT - _MB
    if log:
        lo_v = min(finite) if finite else 0.001
        hi_v = max(finite) if finite else 1.0
        lo = 10 ** math.floor(math.log10(max(lo_v, 1e-4)))
        hi = 10 ** math.ceil(math.log10(max(hi_v, lo * 10)))
        ticks = [10**e for e in range(round(math.log10(lo)), round(math.log10(hi)) + 1)]

        def y_of(v: float) -> float:
            v = max(v, lo)
            return top + ph - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * ph
    else:
        lo = 0.0
        hi = y_max if y_max is not None else (max(finite) * 1.1 if finite else 1.0)
        hi = hi or 1.0
        ticks = _nice_ticks(lo, hi)

        def y_of(v: float) -> float:
            return top + ph - (v - lo) / (hi - lo) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" '
        f'role="img" class="chart" {axis.attrs()}><title>{html.escape(title)}</title>',
        _left_title(title, top),
    ]
    out += axis.shade(shade, top, ph)
    for t in ticks:
        y = y_of(t)
        out.append(f'<line x1="{axis.left}" x2="{axis.right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{_GRID}"/>')
        out.append(f'<text x="{axis.left - 6}" y="{y + 3:.1f}" class="yt">{html.escape(_fmt_tick(t, unit))}</text>')
    out += axis.grid(top, top + ph)
    out.append(
        f'<rect x="{axis.left}" y="{top}" width="{axis.right - axis.left}" height="{ph}" fill="none" stroke="#9CA3AF"/>'
    )
    if reference is not None:
        y = y_of(reference[1])
        out.append(
            f'<line x1="{axis.left}" x2="{axis.right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#6B7280" '
            'stroke-dasharray="1 3"/>'
        )
        out.append(f'<text x="{axis.right - 4}" y="{y - 4:.1f}" class="rt">{html.escape(reference[0])}</text>')
    # The dashed reference last, on top: its gaps let the lines it covers show through.
    for label, color, values in sorted(lines, key=lambda line: line[0] in dashed):
        segment: list[str] = []
        segments: list[list[str]] = []
        for i, v in enumerate(values):
            if math.isnan(v) or (log and v <= 0):
                if segment:
                    segments.append(segment)
                segment = []
                continue
            segment.append(f"{axis.x((i + 0.5) * step):.1f},{y_of(min(v, hi)):.1f}")
        if segment:
            segments.append(segment)
        dash = ' stroke-dasharray="6 3"' if label in dashed else ""
        name = html.escape(label)
        for seg in segments:
            if len(seg) == 1:
                cx, cy = seg[0].split(",")
                out.append(
                    f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{color}" data-series="{name}">'
                    f"<title>{name}</title></circle>"
                )
            else:
                out.append(
                    f'<polyline points="{" ".join(seg)}" fill="none" stroke="{color}" stroke-width="2"{dash} '
                    f'stroke-linejoin="round" data-series="{name}"><title>{name}</title></polyline>'
                )
    out.append("</svg>")
    return "".join(out)


def breaker_chart(
    rows: Sequence[tuple[str, bool, Sequence[tuple[float, str]]] | tuple[str, bool, Sequence[tuple[float, str]], str]],
    *,
    seconds: float,
    shade: tuple[float, float] | None = None,
) -> str:
    """Circuit state over time, one strip per configuration: (label, has_breaker, changes[, color]).

    State is told by shape, not hue, so that each configuration keeps its
    colour: a thin line while closed, a full bar while open, a half bar while
    half-open. The x axis is the same :class:`TimeAxis` as the line charts'.
    """
    strip, gap, head = 14, 8, 24
    axis = TimeAxis(seconds)
    plot_h = len(rows) * (strip + gap)
    height = head + plot_h + _MB
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {height}" width="{_W}" '
        f'height="{height}" role="img" class="chart breaker" {axis.attrs()}><title>Circuit breaker state</title>',
        '<text x="0" y="14" class="ct">Circuit breaker state</text>',
        f'<text x="{axis.left}" y="14" class="nt">thin line: closed · full bar: open (calls fail fast) · '
        "half bar: half-open (probing)</text>",
    ]
    out += axis.shade(shade, head - 4, plot_h)
    out += axis.grid(head - 4, head - 4 + plot_h)
    for i, row in enumerate(rows):
        label, has_breaker, changes = row[0], row[1], row[2]
        color = row[3] if len(row) > 3 else OKABE_ITO["black"]
        y = head + i * (strip + gap)
        name = html.escape(label)
        out.append(f'<text x="{axis.left - 8}" y="{y + 11}" class="yt lab">{name}</text>')
        if not has_breaker:
            out.append(f'<text x="{axis.left + 6}" y="{y + 11}" class="nt">no breaker</text>')
            continue
        out.append(
            f'<rect x="{axis.left}" y="{y + strip / 2 - 1:.1f}" width="{axis.right - axis.left}" height="2" '
            f'fill="{color}" data-series="{name}" data-state="closed"/>'
        )
        state, at = "closed", 0.0
        for when, new in [*changes, (seconds, "end")]:
            x0, x1 = axis.x(at), axis.x(when)
            if x1 > x0 and state in ("open", "half_open"):
                h, dy = (strip, 0.0) if state == "open" else (strip / 2, strip / 4)
                out.append(
                    f'<rect x="{x0:.1f}" y="{y + dy:.1f}" width="{max(x1 - x0, 1.0):.1f}" height="{h:.1f}" '
                    f'fill="{color}" data-series="{name}" data-state="{state}">'
                    f"<title>{name}: {state.replace('_', '-')} from {at:.2f} s to {when:.2f} s</title></rect>"
                )
            state, at = new, max(at, when)
    bottom = head - 4 + plot_h
    out.append(f'<line x1="{axis.left}" x2="{axis.right}" y1="{bottom}" y2="{bottom}" stroke="#9CA3AF"/>')
    out.append("</svg>")
    return "".join(out)


# -- HTML ---------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1140px;color:#111827;
padding:0 16px;line-height:1.45}
h1{margin-bottom:4px}h2{margin-top:40px;border-bottom:1px solid #E5E7EB;padding-bottom:4px}
.meta{color:#6B7280;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:10px 0}
th,td{padding:4px 10px;border-bottom:1px solid #E5E7EB;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.cfg,.nw{white-space:nowrap}
tr.sep td{border-top:2px solid #9CA3AF}
.charts{display:flex;flex-direction:column;gap:2px;margin-top:6px}
.chart .ct{font-size:12px;font-weight:600;fill:#111827}
.chart .yt{font-size:10px;fill:#4B5563;text-anchor:end}
.chart .yt.lab{font-size:11px;fill:#111827}
.chart .xt{font-size:10px;fill:#4B5563;text-anchor:middle}
.chart .rt{font-size:10px;fill:#4B5563;text-anchor:end}
.chart .nt{font-size:10px;fill:#6B7280}
.legend{display:flex;flex-wrap:wrap;gap:4px 18px;font-size:13px;margin:12px 0 4px 172px}
.legend i{display:inline-block;width:22px;height:0;border-top:3px solid;margin-right:6px;vertical-align:middle}
.legend i.dash{border-top-style:dashed}
.legend i.fault-key{width:22px;height:12px;border:none;background:#EBEBEB}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:6px;vertical-align:-1px}
.bought{font-size:16px;background:#F3F4F6;border-left:4px solid #0072B2;padding:8px 12px;margin:12px 0}
.banner{background:#FFF7E6;border-left:4px solid #E69F00;padding:8px 12px;margin:12px 0}
.met{color:#006D4E;font-weight:600}.missed{color:#B23C00;font-weight:600}.inconclusive{color:#8A5A00;font-weight:600}
.note{color:#6B7280;font-size:13px}
code{background:#F3F4F6;padding:1px 4px;border-radius:3px}
"""


def _actions_html(s: Summary) -> str:
    # A browser would break "--grace" after its hyphens.
    return html.escape(s.actions()).replace("--grace", '<span class="nw">--grace</span>')


def _swatch(color: str) -> str:
    return f'<i class="swatch" style="background:{color}"></i>'


def _summary_table(rows: Sequence[tuple[str, str, Summary]], *, with_scenario: bool, colors: dict[str, str]) -> str:
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
        name = f"<td class=cfg>{_swatch(colors.get(key, _OVERFLOW))}{html.escape(s.label)}</td>"
        if s.note:
            body.append(f'<tr{sep}>{cells}{name}<td colspan="8" class="note">skipped: {html.escape(s.note)}</td></tr>')
            continue
        body.append(
            f"<tr{sep}>{cells}{name}"
            f"<td class=n>{s.success:.1%}</td><td class=n>{fmt_ms(s.p50)}</td><td class=n>{fmt_ms(s.p99)}</td>"
            f"<td class=n>{fmt_ms(s.max)}</td><td class=n>{fmt_ms(s.p99_ok)}</td>"
            f"<td class=n>{_fmt_ratio(s.amplification)}</td><td class=n>{s.upstream}</td>"
            f"<td>{_actions_html(s)}</td></tr>"
        )
    return f'<table class="summary">{head}{"".join(body)}</table>'


def _targets_html(targets: Sequence[Target], *, with_scenario: bool = True) -> str:
    if not targets:
        return "<p class=note>No target applies to the scenarios and configurations that ran.</p>"
    items = []
    for t in targets:
        where = f"{html.escape(t.scenario)} / " if with_scenario else ""
        items.append(
            f'<li><span class="{t.verdict}">{t.verdict}</span> {where}{html.escape(t.config)}: '
            f"{html.escape(t.describe())}</li>"
        )
    return '<ul class="targets">' + "".join(items) + "</ul>"


def _scenario_html(run: ScenarioRun, colors: dict[str, str], targets: Sequence[Target]) -> str:
    sc = run.scenario
    seconds = run.duration
    step = bucket_width(run.duration)
    per = "per second" if step == 1 else f"per {step:g} s"
    ran = [c for c in run.runs if not c.skipped]
    sers: list[tuple[str, str, Series]] = [
        (c.config.key, colors[c.config.key], series(c, run.duration, step)) for c in ran
    ]
    shade = fault_window(run)
    dashed = [s.label for key, _, s in sers if key == _REFERENCE]
    legend = "".join(
        f'<span><i class="{"dash" if key == _REFERENCE else ""}" style="border-color:{color}"></i>'
        f"{html.escape(s.label)}</span>"
        for key, color, s in sers
    )
    legend += '<span><i class="fault-key"></i>fault phase</span>'
    common: dict[str, Any] = {"seconds": seconds, "step": step, "shade": shade, "dashed": dashed}
    charts = [
        line_chart(
            f"Success rate {per}",
            [(s.label, color, s.success) for _, color, s in sers],
            unit="%",
            y_max=1.0,
            **common,
        ),
        line_chart(
            "Requests received by the upstream per second",
            [(s.label, color, s.upstream) for _, color, s in sers],
            reference=(f"client rate {run.rate:g}/s", run.rate),
            **common,
        ),
        line_chart(
            f"Latency p50 {per} (log scale)",
            [(s.label, color, s.p50) for _, color, s in sers],
            unit="s",
            log=True,
            **common,
        ),
        line_chart(
            f"Latency p99 {per} (log scale)",
            [(s.label, color, s.p99) for _, color, s in sers],
            unit="s",
            log=True,
            **common,
        ),
        breaker_chart(
            [(c.config.label, c.config.breaker, c.breaker, colors[c.config.key]) for c in ran],
            seconds=seconds,
            shade=shade,
        ),
    ]
    rows = [(sc.title, c.config.key, summarize(c)) for c in run.runs]
    bought = headlines(run)
    mine = [t for t in targets if t.scenario == sc.name]
    banner = ""
    if inconclusive(run):
        banner = (
            f'<p class="banner"><b>Inconclusive.</b> {html.escape(rerun_hint(run)[0].upper() + rerun_hint(run)[1:])}.'
            " The targets of this scenario are neither met nor missed.</p>"
        )
    return (
        f'<section id="{html.escape(sc.name)}"><h2>{html.escape(sc.title)}</h2>'
        + banner
        + (f'<p class="bought"><b>What resilience bought</b> · {html.escape(bought)}</p>' if bought else "")
        + f"<p>{html.escape(sc.description)} The grey band is the fault phase "
        f"({shade[0]:.1f} s to {shade[1]:.1f} s: {html.escape(sc.fault.label)}). "
        f'<span class="note">Event-loop lag of the load generator: p99 {fmt_ms(run.loop_lag_p99)}, '
        f"max {fmt_ms(run.loop_lag_max)}.</span></p>"
        f"<p><b>What to look at:</b> {html.escape(sc.look_for)}</p>"
        + (f"<p><b>Targets:</b></p>{_targets_html(mine, with_scenario=False)}" if mine else "")
        + f"{_summary_table(rows, with_scenario=False, colors=colors)}"
        f'<div class="legend">{legend}</div>'
        f'<div class="charts">{"".join(charts)}</div>{_late_changes(ran, seconds)}</section>'
    )


def _late_changes(ran: Sequence[ConfigRun], seconds: float) -> str:
    """The breaker changes the strips cannot show: after the load stopped, while the last calls finished."""
    late = []
    for c in ran:
        changes = [f"{state.replace('_', '-')} at {when:.1f} s" for when, state in c.breaker if when > seconds]
        if changes:
            late.append(f"{html.escape(c.config.label)}: {', '.join(changes)}")
    if not late:
        return ""
    return f'<p class="note">Breaker changes after the load stopped (not drawn): {"; ".join(late)}.</p>'


def render_html(runs: Sequence[ScenarioRun], *, rate: float, duration: float, seed: int, wall: float) -> str:
    """The whole report as one self-contained HTML document."""
    targets = check_targets(runs)
    keys = [c.config.key for r in runs for c in r.runs]
    colors = palette(keys)
    ran = list({c.config.key: c.config for r in runs for c in r.runs}.values()) or CONFIGS
    configs = "".join(f"<li><b>{html.escape(c.label)}</b>: {html.escape(c.description)}</li>" for c in ran)
    judged = next((c.label for c in ran if c.key == JUDGED), JUDGED)
    sections = "".join(_scenario_html(r, colors, targets) for r in runs)
    from resilient import __version__

    meta = (
        f"resilient {html.escape(__version__)} · Python {platform.python_version()} · "
        f"{html.escape(platform.platform())} · generated {time.strftime('%Y-%m-%d %H:%M:%S')} · "
        f"{rate:g} calls/s per configuration, {duration:g} s per scenario, seed {seed}, "
        f"total {wall:.0f} s"
    )
    tally = " · ".join(
        f"{n} {v}" for v in ("met", "missed", "inconclusive") if (n := sum(t.verdict == v for t in targets))
    )
    lagging = [r for r in runs if inconclusive(r)]
    banner = ""
    if lagging:
        worst = max(lagging, key=lambda r: r.loop_lag_p99)
        names = ", ".join(r.scenario.title for r in lagging)
        banner = (
            f'<p class="banner"><b>Inconclusive: {html.escape(names)}.</b> '
            f"{html.escape(rerun_hint(worst)[0].upper() + rerun_hint(worst)[1:])}.</p>"
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
{banner}
<h2>Targets{f" ({tally})" if tally else ""}</h2>{_targets_html(targets)}
<h2>All results</h2>
{_summary_table(summary_rows(runs), with_scenario=True, colors=colors)}
<h2>How to read this</h2>
<ul>
<li><b>success</b>: calls that got a good answer (from the upstream or, for the cache, a fresh or stale copy).</li>
<li><b>p50 / p99 / max</b>: latency of all calls, failures included, from the time the call was due.</li>
<li><b>load amplification</b>: requests the upstream received per call made; retries raise it, an open breaker
and a cache lower it. Above 1 during an outage means the clients are adding to the fire.</li>
<li><b>what the policies did</b>: retries, breaker openings, calls rejected without calling the upstream (fail
fast), stale answers served by the cache, timeouts, counted from <code>resilient.events</code>.</li>
<li><b>targets</b>: the figures the zero-configuration client (<i>{html.escape(judged)}</i>) aims for, judged
against the unprotected and naive rows of the same run; <i>inconclusive</i> when the load generator's event loop
lagged (p99 above {LAG_LIMIT * 1000:.0f} ms), since the machine then shaped the figures.</li>
<li><b>charts</b>: one colour per configuration everywhere (Okabe-Ito, safe for colour-blind readers), the
unprotected client dashed; all charts of a scenario share one time axis, so a moment is the same column in all.</li>
</ul>
<p>Configurations:</p><ul>{configs}</ul>
{sections}
<p class="note">Generated by <code>resilient demo</code> ({html.escape(" ".join(sys.argv[1:]) or "defaults")}).</p>
</body></html>
"""
