"""From raw call records to the figures the demo reports."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from resilient.demo.runner import ConfigRun, ScenarioRun

__all__ = [
    "Series",
    "Summary",
    "Target",
    "bucket_width",
    "check_targets",
    "open_spans",
    "percentile",
    "series",
    "summarize",
]

#: Outcome kinds that mean "a policy refused the call without calling upstream".
FAIL_FAST = ("circuit_open", "bulkhead_full", "rate_limited", "rejected")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values (nearest rank); NaN if empty."""
    if not sorted_values:
        return math.nan
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[rank]


@dataclass
class Summary:
    """One configuration in one scenario, in figures (latencies in seconds)."""

    label: str
    calls: int = 0
    ok: int = 0
    p50: float = math.nan
    p99: float = math.nan
    max: float = math.nan
    p99_ok: float = math.nan
    upstream: int = 0
    #: p99 latency of the calls made while the circuit was open, and how many.
    failfast_p99: float = math.nan
    failfast: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    breaker_opens: int = 0
    rejections: int = 0
    stale: int = 0
    timeouts: int = 0
    note: str = ""

    @property
    def success(self) -> float:
        """Share of calls that got a good answer."""
        return self.ok / self.calls if self.calls else math.nan

    @property
    def amplification(self) -> float:
        """Requests the upstream received per call the client made."""
        return self.upstream / self.calls if self.calls else math.nan

    def actions(self) -> str:
        """What the policies did, in a few words."""
        parts = []
        for count, what in (
            (self.retries, "retries"),
            (self.breaker_opens, "breaker opens"),
            (self.rejections, "rejected"),
            (self.stale, "stale answers"),
            (self.timeouts, "timeouts"),
            (self.kinds["unfinished"], "cut short at the end (--grace)"),
        ):
            if count:
                parts.append(f"{count} {what}")
        return ", ".join(parts) or "-"


def open_spans(changes: Sequence[tuple[float, str]], end: float) -> list[tuple[float, float]]:
    """The (start, end) intervals in which a breaker was open, from its state changes."""
    spans: list[tuple[float, float]] = []
    opened: float | None = None
    for when, state in changes:
        if state == "open" and opened is None:
            opened = when
        elif state != "open" and opened is not None:
            spans.append((opened, when))
            opened = None
    if opened is not None:
        spans.append((opened, end))
    return spans


def summarize(run: ConfigRun) -> Summary:
    """The figures of one configuration's run."""
    s = Summary(run.config.label, note=run.note)
    if run.target is None:
        return s
    records = run.target.records
    s.calls = len(records)
    s.ok = sum(1 for r in records if r[2] == "ok")
    s.kinds = Counter(r[2] for r in records)
    latencies = sorted(r[1] for r in records)
    s.p50, s.p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    s.max = latencies[-1] if latencies else math.nan
    s.p99_ok = percentile(sorted(r[1] for r in records if r[2] == "ok"), 0.99)
    # Fail fast = the latency of calls made while the circuit was open.
    spans = open_spans(run.breaker, math.inf)
    fast = sorted(r[1] for r in records if any(a <= r[0] < b for a, b in spans))
    s.failfast, s.failfast_p99 = len(fast), percentile(fast, 0.99)
    s.upstream = int(run.upstream.get("total", 0))
    ev = run.events
    s.retries = ev["retry"]
    s.breaker_opens = ev["circuit_opened"]
    s.rejections = max(ev["rejected"], sum(1 for r in records if r[2] in FAIL_FAST))
    s.stale = ev["cache_stale_hit"]
    s.timeouts = ev["timeout"]
    return s


@dataclass
class Series:
    """Figures of one configuration per time bucket (index = bucket since start)."""

    label: str
    calls: list[int]
    success: list[float]
    p50: list[float]
    p99: list[float]
    upstream: list[float]
    breaker: list[tuple[float, str]]


def bucket_width(duration: float) -> float:
    """Seconds per point of the charts: 1 s, finer for short runs."""
    if duration >= 10:
        return 1.0
    return 0.5 if duration >= 4 else 0.25


def series(run: ConfigRun, duration: float, step: float = 1.0) -> Series:
    """Bucket a run's calls by the ``step``-second bucket they were due in.

    ``upstream`` is in requests per second, whatever ``step``.
    """
    n = max(1, math.ceil(duration / step - 1e-9))
    buckets: list[list[tuple[float, str]]] = [[] for _ in range(n)]
    if run.target is not None:
        for due, latency, kind in run.target.records:
            buckets[min(n - 1, max(0, int(due / step)))].append((latency, kind))
    calls, success, p50, p99 = [], [], [], []
    for bucket in buckets:
        calls.append(len(bucket))
        success.append(sum(1 for _, k in bucket if k == "ok") / len(bucket) if bucket else math.nan)
        lat = sorted(latency for latency, _ in bucket)
        p50.append(percentile(lat, 0.5))
        p99.append(percentile(lat, 0.99))
    slot = float(run.upstream.get("slot", 1.0))
    upstream = [0.0] * n
    for i, count in enumerate(run.upstream.get("received", [])):
        b = int(i * slot / step + 1e-9)
        if b < n:
            upstream[b] += count / step
    return Series(run.config.label, calls, success, p50, p99, upstream, list(run.breaker))


@dataclass
class Target:
    """A figure the demo aims for, and whether this run met it."""

    scenario: str
    config: str
    what: str
    value: float
    limit: float
    higher_is_better: bool
    fmt: str = "{:.2f}"

    @property
    def met(self) -> bool:
        """Whether the value is on the right side of the limit."""
        if math.isnan(self.value):
            return False
        return self.value >= self.limit if self.higher_is_better else self.value <= self.limit

    def describe(self) -> str:
        """``"success 0.97 >= 0.96"``."""
        op = ">=" if self.higher_is_better else "<="
        shown = "n/a" if math.isnan(self.value) else self.fmt.format(self.value)
        return f"{self.what} {shown} (target {op} {self.fmt.format(self.limit)})"


def check_targets(runs: Sequence[ScenarioRun]) -> list[Target]:
    """The issue's targets, for the scenarios and configurations that ran."""
    out: list[Target] = []
    for scenario_run in runs:
        name = scenario_run.scenario.name
        by_key = {r.config.key: summarize(r) for r in scenario_run.runs if not r.skipped}
        std = by_key.get("standard")
        if name == "outage":
            if std is not None:
                out.append(Target(name, std.label, "load amplification", std.amplification, 1.1, False))
                if std.failfast:
                    out.append(
                        Target(name, std.label, "fail-fast p99 (ms)", std.failfast_p99 * 1000, 10, False, "{:.1f}")
                    )
                else:
                    out.append(Target(name, std.label, "fail-fast p99 (ms): circuit never open", math.nan, 10, False))
            budget = by_key.get("budget")
            if budget is not None:
                out.append(Target(name, budget.label, "load amplification", budget.amplification, 1.1, False))
            cached = by_key.get("stale-cache")
            if cached is not None:
                out.append(Target(name, cached.label, "success", cached.success, 0.99, True, "{:.3f}"))
        elif name == "brownout" and std is not None:
            out.append(Target(name, std.label, "success", std.success, 0.96, True, "{:.3f}"))
            out.append(Target(name, std.label, "load amplification", std.amplification, 1.45, False))
        elif name == "rate-limited":
            for key in ("standard", "budget"):
                found = by_key.get(key)
                if found is not None:
                    out.append(Target(name, found.label, "load amplification", found.amplification, 1.1, False))
    return out
