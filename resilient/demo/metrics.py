"""From raw call records to the figures the demo reports."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from resilient.demo.runner import ConfigRun, ScenarioRun

__all__ = [
    "GOALS",
    "JUDGED",
    "LAG_LIMIT",
    "MEASURES",
    "Goal",
    "Measure",
    "Series",
    "Summary",
    "Target",
    "bucket_width",
    "check_targets",
    "fault_window",
    "headline",
    "headlines",
    "inconclusive",
    "open_spans",
    "percentile",
    "rerun_hint",
    "scenario_summaries",
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
    #: Calls due in the fault phase, requests the upstream received in it, and
    #: the p99 latency of those calls (when :func:`summarize` got the window).
    fault_calls: int = 0
    fault_upstream: int = 0
    fault_p99: float = math.nan

    @property
    def success(self) -> float:
        """Share of calls that got a good answer."""
        return self.ok / self.calls if self.calls else math.nan

    @property
    def amplification(self) -> float:
        """Requests the upstream received per call the client made."""
        return self.upstream / self.calls if self.calls else math.nan

    @property
    def fault_load(self) -> float:
        """Requests the upstream received per call made, during the fault phase."""
        return self.fault_upstream / self.fault_calls if self.fault_calls else math.nan

    def actions(self) -> str:
        """What the policies did, in a few words."""
        parts = []
        for count, what in (
            (self.retries, "retries"),
            (self.breaker_opens, "breaker opens"),
            (self.rejections, "rejected"),
            (self.stale, "stale answers"),
            (self.timeouts, "timeouts"),
            (self.kinds["unfinished"], "cut off by --grace"),
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


def summarize(run: ConfigRun, window: tuple[float, float] | None = None) -> Summary:
    """The figures of one configuration's run; ``window`` (seconds) adds the fault phase's."""
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
    if window is not None:
        a, b = window
        during = sorted(r[1] for r in records if a <= r[0] < b)
        s.fault_calls, s.fault_p99 = len(during), percentile(during, 0.99)
        slot = float(run.upstream.get("slot", 1.0))
        received = run.upstream.get("received", [])
        s.fault_upstream = int(sum(n for i, n in enumerate(received) if a <= i * slot + 1e-9 < b))
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


#: Above this p99 of the load generator's event-loop lag (seconds), the machine,
#: not the upstream, shaped the figures: the run is inconclusive.
LAG_LIMIT = 0.050

#: The configuration the targets judge: the zero-configuration client.
JUDGED = "standard"


def inconclusive(run: ScenarioRun) -> bool:
    """Whether the load generator fell behind (event-loop lag p99 above :data:`LAG_LIMIT`)."""
    return run.loop_lag_p99 > LAG_LIMIT


def rerun_hint(run: ScenarioRun) -> str:
    """What to do about an inconclusive run, in one sentence."""
    half = run.rate / 2
    lower = math.floor(half / 10) * 10 if half >= 20 else round(half, 1)
    return (
        f"the load generator's event loop lagged (p99 {_ms(run.loop_lag_p99)} > "
        f"{_ms(LAG_LIMIT)}), so the machine, not the upstream, shaped these figures: "
        f"rerun with a lower --rate (e.g. --rate {lower:g}) or on a quieter machine"
    )


@dataclass
class Target:
    """A figure the demo aims for, and whether this run met it."""

    scenario: str
    config: str
    what: str
    value: float
    limit: float
    higher_is_better: bool
    #: A format string or a function that shows a value.
    fmt: str | Callable[[float], str] = "{:.2f}"
    #: How the limit was found, for relative targets ("unprotected 80.7% - 0.02").
    basis: str = ""
    #: The load generator lagged: the figure says nothing about the client.
    inconclusive: bool = False

    @property
    def met(self) -> bool:
        """Whether the value is on the right side of the limit."""
        if math.isnan(self.value) or math.isnan(self.limit):
            return False
        return self.value >= self.limit if self.higher_is_better else self.value <= self.limit

    @property
    def verdict(self) -> str:
        """``"met"``, ``"missed"`` or ``"inconclusive"`` (the load generator lagged)."""
        if self.inconclusive:
            return "inconclusive"
        return "met" if self.met else "missed"

    def describe(self) -> str:
        """``"success 97.0% (target >= 98.5%)"``, with the basis of a relative limit."""
        op = ">=" if self.higher_is_better else "<="
        show = self.fmt.format if isinstance(self.fmt, str) else self.fmt
        shown = "n/a" if math.isnan(self.value) else show(self.value)
        limit = "n/a" if math.isnan(self.limit) else show(self.limit)
        basis = f": {self.basis}" if self.basis else ""
        return f"{self.what} {shown} (target {op} {limit}{basis})"


@dataclass(frozen=True)
class Measure:
    """A figure of a :class:`Summary` that a target can judge."""

    what: str
    get: Callable[[Summary], float]
    show: Callable[[float], str]
    higher_is_better: bool
    #: The range a relative limit is clamped to (a share cannot be below 0).
    bounds: tuple[float, float] = (-math.inf, math.inf)


MEASURES: dict[str, Measure] = {
    "success": Measure("success", lambda s: s.success, "{:.1%}".format, True, (0.0, 1.0)),
    "load": Measure("load", lambda s: s.amplification, "{:.2f}x".format, False),
    "fault_load": Measure("load during the fault", lambda s: s.fault_load, "{:.2f}x".format, False),
    "p99": Measure("p99", lambda s: s.p99, lambda v: _ms(v), False),
}


@dataclass(frozen=True)
class Goal:
    """One row of :data:`GOALS`: a figure of the judged configuration and its limit.

    The limit is ``limit`` when ``against`` is empty; otherwise it is the best
    value (highest for a figure where higher is better, lowest otherwise) of
    the configurations named in ``against``, in the same run, times
    ``scale`` plus ``offset``. A target whose rows did not run is left out.
    """

    scenario: str
    measure: str
    limit: float = math.nan
    against: tuple[str, ...] = ()
    scale: float = 1.0
    offset: float = 0.0
    config: str = JUDGED

    def check(self, rows: Mapping[str, Summary], *, lagging: bool = False) -> Target | None:
        """The target for one scenario's summaries (by configuration key), or None if it does not apply."""
        judged = rows.get(self.config)
        if judged is None:
            return None
        m = MEASURES[self.measure]
        basis = ""
        if self.against:
            refs = [(rows[k].label, m.get(rows[k])) for k in self.against if k in rows]
            refs = [(label, v) for label, v in refs if not math.isnan(v)]
            if not refs:
                return None
            pick = max if m.higher_is_better else min
            best_label, best = pick(refs, key=lambda r: r[1])
            limit = min(max(best * self.scale + self.offset, m.bounds[0]), m.bounds[1])
            basis = ("best of " if len(refs) > 1 else "") + best_label + " " + m.show(best)
            if self.scale != 1.0:
                basis += f" x {self.scale:g}"
            if self.offset:
                basis += f" {'-' if self.offset < 0 else '+'} {m.show(abs(self.offset))}"
        else:
            limit = self.limit
        return Target(
            self.scenario, judged.label, m.what, m.get(judged), limit, m.higher_is_better, m.show, basis, lagging
        )


#: The targets of the zero-configuration client (issue 16), judged against the
#: unprotected ("plain") and naive rows of the same run. The slow-tail p99 gets
#: 5% for the noise between upstream instances (each draws its own slow answers).
GOALS: tuple[Goal, ...] = (
    # Issue 16: the best of plain httpx and the breaker peers (benchmarks/scenarios.py's keys), not naive retries.
    Goal("outage", "success", against=("plain", "tenacity-aiobreaker", "pyresilience"), offset=-0.02),
    Goal("outage", "fault_load", 0.75),
    Goal("outage", "p99", 0.100),
    Goal("brownout", "success", 0.985),
    Goal("brownout", "load", 1.45),
    Goal("brownout", "p99", 0.500),
    Goal("slow-tail", "p99", against=("plain",), scale=1.05),
    Goal("rate-limited", "success", against=("plain",)),
    Goal("rate-limited", "load", 1.05),
    Goal("overload", "success", against=("plain",), offset=-0.02),
    Goal("overload", "load", 1.10),
    Goal("overload", "p99", against=("plain",), scale=1.5),
    # Issue 19: the hedging pipeline on the slow tail (5% of answers take 1 s).
    Goal("slow-tail", "p99", 0.100, config="hedging"),
    Goal("slow-tail", "load", 1.10, config="hedging"),
    Goal("slow-tail", "success", 1.0, config="hedging"),
)


def fault_window(run: ScenarioRun) -> tuple[float, float]:
    """The fault phase of a run, in seconds since its start."""
    fault = run.scenario.fault
    return fault.start * run.duration, fault.end * run.duration


def scenario_summaries(run: ScenarioRun) -> dict[str, Summary]:
    """The summaries of the configurations that ran, by configuration key (fault-phase figures included)."""
    window = fault_window(run)
    return {c.config.key: summarize(c, window) for c in run.runs if not c.skipped}


def check_targets(runs: Sequence[ScenarioRun], goals: Sequence[Goal] | None = None) -> list[Target]:
    """The targets of ``goals`` (default :data:`GOALS`) for the scenarios and configurations that ran.

    A scenario whose load generator lagged (:func:`inconclusive`) gets its
    targets marked inconclusive rather than met or missed.
    """
    out: list[Target] = []
    for scenario_run in runs:
        name = scenario_run.scenario.name
        rows = scenario_summaries(scenario_run)
        lagging = inconclusive(scenario_run)
        for goal in GOALS if goals is None else goals:
            if goal.scenario == name and (target := goal.check(rows, lagging=lagging)) is not None:
                out.append(target)
    return out


# -- what resilience bought ------------------------------------------------------

#: What the upstream is during the fault, in the headline's words.
_UPSTREAM_NOUN = {
    "outage": "the dead upstream",
    "brownout": "the failing upstream",
    "slow-tail": "the slow upstream",
    "overload": "the overloaded upstream",
    "rate-limited": "the rate-limited upstream",
}


def _ms(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s".replace(".00 s", " s")
    if seconds >= 0.01:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds * 1000:.1f} ms"


def headline(scenario: str, judged: Summary, plain: Summary) -> str:
    """One line of what resilience bought in a scenario, in numbers, against the unprotected row.

    Gains come first ("cut the load on the dead upstream by 46%, failed fast
    in 3 ms instead of waiting 98 ms, kept 99.4% of calls succeeding against
    70.0%"), then what it cost ("but only 24.3% of calls succeeded against
    70.0%"). Differences too small to tell from noise (half a point of
    success, 5% of load, 10% or 5 ms of p99) are left out.
    """
    noun = _UPSTREAM_NOUN.get(scenario, "the upstream")
    gains: list[str] = []
    costs: list[str] = []
    load, plain_load = judged.fault_load, plain.fault_load
    if math.isnan(load) or math.isnan(plain_load):
        load, plain_load = judged.amplification, plain.amplification
        where = "the upstream"
    else:
        where = noun
    if not (math.isnan(load) or math.isnan(plain_load)) and plain_load > 0:
        change = load / plain_load - 1
        if change <= -0.05:
            gains.append(f"cut the load on {where} by {-change:.0%}")
        elif change >= 0.05:
            costs.append(f"{change:.0%} more load on {where}")
    waited = plain.fault_p99 if not math.isnan(plain.fault_p99) else plain.p99
    # NaN compares false: no fail-fast figure, no clause.
    if judged.failfast and judged.failfast_p99 * 1.5 < waited:
        gains.append(f"failed fast in {_ms(judged.failfast_p99)} instead of waiting {_ms(waited)}")
    ok, plain_ok = judged.success, plain.success
    if not (math.isnan(ok) or math.isnan(plain_ok)):
        if ok - plain_ok >= 0.005:
            gains.append(f"kept {ok:.1%} of calls succeeding against {plain_ok:.1%}")
        elif plain_ok - ok >= 0.005:
            costs.append(f"only {ok:.1%} of calls succeeded against {plain_ok:.1%}")
    p99, plain_p99 = judged.p99, plain.p99
    if not (math.isnan(p99) or math.isnan(plain_p99)) and abs(p99 - plain_p99) >= 0.005:
        if p99 <= plain_p99 * 0.9:
            gains.append(f"cut the p99 from {_ms(plain_p99)} to {_ms(p99)}")
        elif p99 >= plain_p99 * 1.1:
            costs.append(f"a p99 of {_ms(p99)} against {_ms(plain_p99)}")
    lead = f"{judged.label} against {plain.label}: "
    if not gains and not costs:
        same = f"success {ok:.1%}" if not math.isnan(ok) else "no figures"
        if not math.isnan(p99):
            same += f", p99 {_ms(p99)}"
        return lead + f"no difference ({same})."
    if not gains:
        return lead + "bought nothing here: " + ", ".join(costs) + "."
    return lead + ", ".join(gains) + ("; but " + ", ".join(costs) if costs else "") + "."


def headlines(run: ScenarioRun) -> str:
    """The :func:`headline` of a scenario run (judged: the zero-configuration client), or ``""``."""
    rows = scenario_summaries(run)
    plain = rows.get("plain")
    judged = rows.get(JUDGED)
    if judged is None:
        judged = next((s for k, s in rows.items() if k not in ("plain", "naive")), None)
    if plain is None or judged is None:
        return ""
    return headline(run.scenario.name, judged, plain)
