"""Peer libraries, each configured like the matching resilient case.

A peer that is not installed is skipped (``pip install --group bench``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from benchmarks.cases import Case, sync_target, target


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _tenacity() -> Callable[[], Any]:
    import tenacity

    return tenacity.retry(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_exponential())(target)  # type: ignore[no-any-return]


def _tenacity_sync() -> Callable[[], Any]:
    import tenacity

    return tenacity.retry(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_exponential())(sync_target)  # type: ignore[no-any-return]


def _stamina() -> Callable[[], Any]:
    import stamina

    return stamina.retry(on=Exception, attempts=3)(target)


def _backoff() -> Callable[[], Any]:
    import backoff

    return backoff.on_exception(backoff.expo, Exception, max_tries=3)(target)  # type: ignore[no-any-return]


CASES: list[Case] = []
if _have("tenacity"):
    CASES += [
        Case("tenacity retry", "retry", _tenacity),
        Case("tenacity retry (sync)", "retry", _tenacity_sync, kind="sync"),
    ]
if _have("stamina"):
    CASES.append(Case("stamina retry", "retry", _stamina))
if _have("backoff"):
    CASES.append(Case("backoff on_exception", "retry", _backoff))
