"""Success-path overhead per call: resilient's policies against the floors and peers.

Usage::

    .venv/bin/python -m benchmarks.overhead            # full run, a few minutes
    .venv/bin/python -m benchmarks.overhead --quick    # smoke run (the tests use it)
    .venv/bin/python -m benchmarks.overhead --group retry --markdown

Every case is timed in the same process and event loop: ``min`` over
``--repeat`` rounds of ``--number`` calls, reported in microseconds per call,
as overhead over the bare call of its kind, and as a ratio to it; plus bytes
allocated per call (tracemalloc, separate short run).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import logging
import pkgutil
import platform
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from benchmarks.cases import Case

CASE_MODULES = "benchmarks.cases"


def load_cases() -> list[Case]:
    """Every ``CASES`` of every module in ``benchmarks/cases``."""
    import benchmarks.cases as pkg

    cases: list[Case] = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{CASE_MODULES}.{info.name}")
        cases.extend(getattr(module, "CASES", []))
    return cases


async def _time_async(fn: Callable[[], Any], number: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.disable()
        start = time.perf_counter()
        for _ in range(number):
            await fn()
        elapsed = time.perf_counter() - start
        gc.enable()
        best = min(best, elapsed / number)
    return best


def _time_sync(fn: Callable[[], Any], number: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.disable()
        start = time.perf_counter()
        for _ in range(number):
            fn()
        elapsed = time.perf_counter() - start
        gc.enable()
        best = min(best, elapsed / number)
    return best


async def _alloc_async(fn: Callable[[], Any], number: int) -> float:
    for _ in range(100):
        await fn()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    snap1 = tracemalloc.take_snapshot()
    for _ in range(number):
        await fn()
    snap2 = tracemalloc.take_snapshot()
    tracemalloc.stop()
    del before
    stats = snap2.compare_to(snap1, "filename")
    allocated = sum(max(s.size_diff, 0) for s in stats)
    return allocated / number


async def run(cases: list[Case], number: int, repeat: int, measure_alloc: bool) -> list[dict[str, Any]]:
    """Time every case; returns one row per case."""
    rows: list[dict[str, Any]] = []
    built: list[tuple[Case, Callable[[], Any]]] = []
    for case in cases:
        try:
            built.append((case, case.factory()))
        except Exception as exc:  # a peer that cannot be set up is reported, not fatal
            print(f"skip {case.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
    for case, fn in built:
        # Warm up (and prove the case works) before timing.
        if case.kind == "async":
            for _ in range(200):
                await fn()
            per_call = await _time_async(fn, number, repeat)
        else:
            for _ in range(200):
                fn()
            per_call = _time_sync(fn, number, repeat)
        row: dict[str, Any] = {"case": case, "us": per_call * 1e6}
        if measure_alloc and case.kind == "async":
            row["bytes"] = await _alloc_async(fn, min(number, 2000))
        rows.append(row)
    return rows


def report(rows: list[dict[str, Any]], markdown: bool) -> str:
    """A table: case, us/call, overhead over bare, ratio to bare, bytes/call."""
    floors = {
        "async": next((r["us"] for r in rows if r["case"].name == "bare await"), None),
        "sync": next((r["us"] for r in rows if r["case"].name == "bare call (sync)"), None),
    }
    lines = []
    header = ("group", "case", "us/call", "overhead us", "x bare", "B/call")
    if markdown:
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
    else:
        lines.append(f"{header[0]:<10} {header[1]:<56} {header[2]:>8} {header[3]:>12} {header[4]:>7} {header[5]:>7}")
    for r in sorted(rows, key=lambda r: (r["case"].group, not r["case"].ours, r["us"])):
        case: Case = r["case"]
        floor = floors[case.kind]
        over = r["us"] - floor if floor else float("nan")
        ratio = r["us"] / floor if floor else float("nan")
        name = (
            ("* " if case.ours else "  ")
            + case.name
            + (" [sync]" if case.kind == "sync" and "sync" not in case.name else "")
        )
        alloc = f"{r['bytes']:.0f}" if "bytes" in r else "-"
        if markdown:
            lines.append(f"| {case.group} | {name.strip()} | {r['us']:.2f} | {over:.2f} | {ratio:.1f} | {alloc} |")
        else:
            lines.append(f"{case.group:<10} {name:<56} {r['us']:>8.2f} {over:>12.2f} {ratio:>7.1f} {alloc:>7}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: few iterations")
    parser.add_argument("--number", type=int, default=20_000, help="calls per round")
    parser.add_argument("--repeat", type=int, default=7, help="rounds; the best is kept")
    parser.add_argument("--group", action="append", help="only these groups (repeatable)")
    parser.add_argument("--no-alloc", action="store_true", help="skip the tracemalloc pass")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    # Some cases open breakers on purpose: their warnings are not results.
    logging.getLogger("resilient").setLevel(logging.ERROR)
    number, repeat = (200, 2) if args.quick else (args.number, args.repeat)
    cases = load_cases()
    if args.group:
        cases = [c for c in cases if c.group in args.group or c.group == "floor"]
    print(f"python {platform.python_version()} on {platform.machine()}, {number} calls x {repeat} rounds (best)")
    rows = asyncio.run(run(cases, number, repeat, measure_alloc=not args.no_alloc and not args.quick))
    print(report(rows, args.markdown))
    print("* = resilient; overhead = us/call minus the bare call of the same kind")
    return 0


if __name__ == "__main__":
    sys.exit(main())
