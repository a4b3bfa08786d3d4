"""``resilient demo``: what resilience buys, against a flaky upstream, in two minutes.

It starts a flaky upstream (uvicorn on 127.0.0.1, a free port) that plays
scripted faults (outage, brownout, slow tail, overload, rate limiting),
sends it open-loop load through several client configurations at once
(unprotected, naive retries, the ``resilient`` standard pipeline, the same
with a retry budget, with Microsoft's preset, and with a stale cache), shows
progress while it runs, prints a comparison table and writes a
self-contained HTML report (``docs/demo.md`` explains how to read it).

Needs the ``demo`` extra: ``pip install 'resilient-toolkit[demo]'``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resilient.demo.report import PLAIN_WIDTH

__all__ = ["main"]

DEFAULT_DURATION = 15.0
DEFAULT_RATE = 200.0
QUICK_DURATION = 5.0


def _parser() -> argparse.ArgumentParser:
    from resilient.demo.configs import CONFIGS
    from resilient.demo.upstream import SCENARIOS

    p = argparse.ArgumentParser(
        prog="resilient demo",
        description="Drive a flaky upstream through several client configurations and report what resilience buys.",
    )
    p.add_argument(
        "--scenario",
        action="append",
        metavar="NAME",
        help=f"scenario to run (repeatable, or 'all', the default): {', '.join(SCENARIOS)}",
    )
    p.add_argument(
        "--config",
        action="append",
        metavar="NAME",
        help=f"client configuration to run (repeatable; default all): {', '.join(c.key for c in CONFIGS)}",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help=f"seconds of load per scenario; configurations run at the same time (default {DEFAULT_DURATION:g}, "
        f"--quick {QUICK_DURATION:g})",
    )
    p.add_argument("--rate", type=float, default=DEFAULT_RATE, help="calls per second per configuration (default 200)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the faults and the keys (default 0)")
    p.add_argument("--out", default="resilient-report.html", help="HTML report path (default resilient-report.html)")
    p.add_argument("--quick", action="store_true", help=f"a short run: {QUICK_DURATION:g} s per scenario, 3 s of grace")
    p.add_argument(
        "--grace",
        type=float,
        default=None,
        help="seconds calls still running after the load stops may take to finish (default 6, --quick 3)",
    )
    p.add_argument("--port", type=int, default=0, help="port of the upstream on 127.0.0.1 (default: a free one)")
    p.add_argument(
        "--httpcore", action="store_true", help="send with httpx's default transport instead of the demo's light one"
    )
    p.add_argument("--plain", action="store_true", help="plain progress lines instead of the live display")
    return p


def _resolve(values: Sequence[str] | None, known: Sequence[str], what: str) -> list[str]:
    if not values or "all" in values:
        return list(known)
    out: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if name not in known:
                raise SystemExit(f"resilient demo: unknown {what} {name!r}; choose from: {', '.join(known)}, all")
            if name not in out:
                out.append(name)
    return out


def _pack(head: str, parts: Sequence[str], *, width: int = PLAIN_WIDTH, sep: str = " | ", indent: str = "    ") -> str:
    """``head`` then ``parts`` joined by ``sep``, over as many lines of at most ``width`` as needed.

    A part is never split; continuation lines start with ``indent``.
    """
    lines: list[str] = []
    line, fresh = head, True
    for part in parts:
        if not fresh and len(line) + len(sep) + len(part) > width:
            lines.append(line.rstrip())
            line, fresh = indent, True
        line += ("" if fresh else sep) + part
        fresh = False
    lines.append(line.rstrip())
    return "\n".join(lines)


def _wrap(text: str, *, width: int = PLAIN_WIDTH, indent: str = "    ") -> str:
    """``text`` wrapped at ``width`` columns, continuation lines indented."""
    return "\n".join(textwrap.wrap(text, width, subsequent_indent=indent, break_on_hyphens=False)) or text


Row = tuple[str, int, int, float, float, str]


def _into_grace(run: Any, elapsed: float) -> float:
    # The grace starts when the last call starts, which a lagging loop makes
    # later than the run's duration: never show more grace than there is.
    duration: float = run.duration
    grace: float = run.grace
    return min(elapsed - duration, grace)


class _Progress:
    """Live progress: a rich display on a terminal, a line every 2 s otherwise."""

    def __init__(self, total: int, *, plain: bool) -> None:
        self.total = total
        self.index = 0
        self.console: Any = None
        self.live: Any = None
        self.last_plain = 0.0
        if not plain and sys.stdout.isatty() and os.environ.get("TERM") != "dumb":
            try:
                from rich.console import Console
            except ImportError:
                pass
            else:
                self.console = Console()

    def print(self, text: str, *, indent: int = 0) -> None:
        """A line of output: wrapped by rich on a terminal, at ``PLAIN_WIDTH`` columns otherwise.

        ``indent`` spaces start the line and every line it wraps onto.
        """
        if self.console is not None:
            if indent:
                from rich.padding import Padding
                from rich.text import Text

                self.console.print(Padding(Text(text), (0, 0, 0, indent)))
            else:
                self.console.print(text, highlight=False)
        else:
            pad = " " * indent
            print(_wrap(pad + text, indent=pad + "  "), flush=True)

    def start(self, index: int, run_title: str) -> None:
        self.index = index
        if self.console is not None:
            from rich.live import Live

            self.live = Live(console=self.console, refresh_per_second=4, transient=True)
            self.live.start()
        else:
            print(_wrap(f"[{index}/{self.total}] {run_title} ..."), flush=True)
            self.last_plain = time.monotonic()

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def tick(self, run: Any, elapsed: float) -> None:
        rows: list[Row] = []
        for c in run.runs:
            if c.target is None:
                continue
            recs = c.target.records
            done = len(recs)
            ok = sum(1 for r in recs if r[2] == "ok")
            recent = [r for r in recs[-int(run.rate * 3) :] if r[0] >= elapsed - 1.5]
            recent_ok = sum(1 for r in recent if r[2] == "ok") / len(recent) if recent else math.nan
            state = c.breaker[-1][1] if c.breaker else ("closed" if c.config.breaker else "-")
            rows.append(
                (c.config.label, c.target.started, c.target.inflight, ok / done if done else math.nan, recent_ok, state)
            )
        if self.live is not None:
            self.live.update(self._render(run, elapsed, rows))
        elif time.monotonic() - self.last_plain >= 2.0:
            self.last_plain = time.monotonic()
            print(self._plain_line(run, elapsed, rows), flush=True)

    @staticmethod
    def _plain_line(run: Any, elapsed: float, rows: Sequence[Row]) -> str:
        if elapsed > run.duration:
            head = (
                f"  {run.scenario.name} draining ({run.inflight} in flight), "
                f"{_into_grace(run, elapsed):.1f}/{run.grace:g} s of grace: "
            )
        else:
            head = f"  {run.scenario.name} {elapsed:4.1f}/{run.duration:g} s: "
        parts = [f"{label} ok {okr:.0%}" if not math.isnan(okr) else f"{label} -" for label, _, _, okr, _, _ in rows]
        return _pack(head, parts)

    def _render(self, run: Any, elapsed: float, rows: Sequence[Row]) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        from resilient.demo.metrics import LAG_LIMIT, fault_window

        width = self.console.width if self.console is not None else 100
        segments = [Text(f"[{self.index}/{self.total}] {run.scenario.title}", style="bold")]
        if elapsed > run.duration:
            segments.append(Text(f"draining ({run.inflight} in flight)", style="yellow"))
            segments.append(Text(f"{_into_grace(run, elapsed):.1f} / {run.grace:g} s of grace"))
        else:
            segments.append(Text(f"{elapsed:.1f} / {run.duration:g} s"))
        recent = run.lag[-50:]
        if recent:
            lag = max(recent)
            segments.append(Text(f"loop lag {lag * 1000:.0f} ms", style="red" if lag > LAG_LIMIT else "dim"))
        a, b = fault_window(run)
        segments.append(Text(f"fault {a:g}-{b:g} s: {run.scenario.fault.label}", style="dim"))
        # The head's parts, two spaces apart, on as many lines as the width needs (a part is never split).
        lines: list[Any] = []
        line = Text()
        for seg in segments:
            if line.cell_len and line.cell_len + 2 + seg.cell_len > width:
                lines.append(line)
                line = Text()
            if line.cell_len:
                line.append("  ")
            line.append(seg)
        lines.append(line)
        done = min(elapsed, run.duration)
        bar = Table.grid(padding=(0, 1))
        bar.add_column(no_wrap=True)
        bar.add_column(no_wrap=True, justify="right")
        bar.add_row(
            ProgressBar(total=run.duration, completed=done, width=max(10, min(60, width - 6))),
            f"{done / run.duration:.0%}",
        )
        lines += [bar, Text("")]
        columns = ["configuration", "calls", "in flight", "success", "last 1.5 s", "breaker"]
        # Narrower than the table: drop the least telling columns rather than squeeze the labels.
        if width < 74:
            columns.remove("in flight")
        if width < 62:
            columns.remove("last 1.5 s")
        table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
        for col in columns:
            table.add_column(col, justify="left" if col in ("configuration", "breaker") else "right", no_wrap=True)
        colors = {"open": "red", "half_open": "yellow", "closed": "green"}
        for label, started, inflight, okr, recent_ok, state in rows:
            cells: dict[str, Any] = {
                "configuration": label,
                "calls": str(started),
                "in flight": str(inflight),
                "success": "-" if math.isnan(okr) else f"{okr:.1%}",
                "last 1.5 s": "-" if math.isnan(recent_ok) else f"{recent_ok:.0%}",
                "breaker": Text(state.replace("_", "-"), style=colors.get(state, "")),
            }
            table.add_row(*(cells[col] for col in columns))
        lines.append(table)
        return Group(*lines)


async def _run_all(
    scenario_names: list[str], config_keys: list[str], url: str, args: argparse.Namespace, progress: _Progress
) -> list[Any]:
    from resilient.demo.configs import CONFIGS
    from resilient.demo.metrics import headlines, inconclusive, rerun_hint
    from resilient.demo.runner import run_scenario
    from resilient.demo.upstream import SCENARIOS

    configs = [c for c in CONFIGS if c.key in config_keys]
    runs = []
    for i, name in enumerate(scenario_names, 1):
        scenario = SCENARIOS[name]
        progress.start(i, f"{scenario.title} ({args.duration:g} s)")
        try:
            run = await run_scenario(
                scenario,
                configs,
                url,
                duration=args.duration,
                rate=args.rate,
                seed=args.seed,
                grace=args.grace,
                on_tick=progress.tick,
            )
        finally:
            progress.stop()
        runs.append(run)
        progress.print(f"[{i}/{len(scenario_names)}] {scenario.title}: done in {run.wall:.1f} s")
        if line := headlines(run):
            progress.print(line, indent=2)
        if inconclusive(run):
            progress.print("inconclusive: " + rerun_hint(run), indent=2)
    return runs


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the process exit status."""
    try:
        import httpx  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        print(
            f"resilient demo needs the demo extra ({exc.name} is missing): pip install 'resilient-toolkit[demo]'",
            file=sys.stderr,
        )
        return 2
    from resilient.demo.configs import CONFIGS
    from resilient.demo.report import render_html, terminal_table
    from resilient.demo.runner import Upstream, UpstreamError
    from resilient.demo.upstream import SCENARIOS

    args = _parser().parse_args(argv)
    if args.duration is None:
        args.duration = QUICK_DURATION if args.quick else DEFAULT_DURATION
    if args.grace is None:
        args.grace = 3.0 if args.quick else 6.0
    if not (args.duration > 0 and args.rate > 0 and args.grace >= 0):
        print("resilient demo: --duration and --rate must be > 0, --grace >= 0", file=sys.stderr)
        return 2
    if args.httpcore:
        from resilient.demo import configs

        configs.USE_HTTPCORE = True
    scenario_names = _resolve(args.scenario, list(SCENARIOS), "scenario")
    config_keys = _resolve(args.config, [c.key for c in CONFIGS], "configuration")
    progress = _Progress(len(scenario_names), plain=args.plain)
    progress.print(
        f"resilient demo: {len(scenario_names)} scenario(s) x {len(config_keys)} configuration(s), "
        f"{args.duration:g} s each at {args.rate:g} calls/s per configuration (about "
        f"{len(scenario_names) * (args.duration + 1.5):.0f} s)"
    )
    for config in CONFIGS:
        if config.key in config_keys and (why := config.unavailable()):
            progress.print(f"note: configuration {config.label!r} is skipped: {why}")
    started = time.monotonic()
    upstream = Upstream(port=args.port)
    try:
        upstream.start()
    except UpstreamError as exc:
        print(f"resilient demo: cannot start the flaky upstream on 127.0.0.1: {exc}", file=sys.stderr)
        return 2
    # The policies log breaker openings and spent budgets as warnings; here
    # the report counts them (from resilient.events) instead.
    logger = logging.getLogger("resilient")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        progress.print(f"flaky upstream listening on {upstream.url}")
        runs = asyncio.run(_run_all(scenario_names, config_keys, upstream.url, args, progress))
    except KeyboardInterrupt:
        print("resilient demo: interrupted", file=sys.stderr)
        return 130
    finally:
        logger.setLevel(level)
        upstream.stop()
    wall = time.monotonic() - started
    if progress.console is not None:
        terminal_table(runs, rich_console=progress.console)
    else:
        print(terminal_table(runs))
    out = Path(args.out)
    try:
        out.write_text(
            render_html(runs, rate=args.rate, duration=args.duration, seed=args.seed, wall=wall), encoding="utf-8"
        )
    except OSError as exc:
        print(f"resilient demo: cannot write the report to {out}: {exc}", file=sys.stderr)
        return 1
    progress.print(f"report: {out.resolve()}  ({wall:.0f} s in all)")
    return 0
