"""The benchmark scripts run in a smoke mode so that they cannot rot (no timing asserted)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_overhead_quick_runs() -> None:
    out = _run("-m", "benchmarks.overhead", "--quick")
    assert "bare await" in out
    assert "Retry(3)" in out
    assert "full pipeline" in out


def test_httpx_throughput_quick_runs() -> None:
    out = _run("benchmarks/httpx_throughput.py", "--quick")
    assert "ratio resilient / plain" in out


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server binary on this machine")
def test_redis_overhead_quick_runs() -> None:
    out = _run("benchmarks/redis_overhead.py", "--quick")
    assert "decisions/s" in out


def test_cache_memory_small_runs() -> None:
    out = _run("benchmarks/cache_memory.py", "--entries", "2000")
    assert "StaleCache" in out


def test_asgi_throughput_quick_runs() -> None:
    out = _run("benchmarks/asgi_throughput.py", "--quick")
    assert "server CPU per request" in out


def test_concurrency_quick_runs() -> None:
    out = _run("benchmarks/concurrency.py", "--quick")
    assert "gradient (AdaptiveConcurrency())" in out
    assert "Gradient2.update alone" in out
