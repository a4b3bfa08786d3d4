"""Hedging cases: the success path of a fixed delay, an observed-quantile delay and a budget."""

from __future__ import annotations

from benchmarks.cases import Case, target
from resilient import Hedge, LatencyQuantile, RetryBudget

CASES = [
    Case("Hedge(0.05)", "hedge", lambda: Hedge(0.05)(target), ours=True, note="a task per call"),
    Case(
        "Hedge('p95')",
        "hedge",
        lambda: Hedge(LatencyQuantile(0.95))(target),
        ours=True,
        note="records every attempt's latency",
    ),
    Case("Hedge(0.05, budget=)", "hedge", lambda: Hedge(0.05, budget=RetryBudget())(target), ours=True),
]
