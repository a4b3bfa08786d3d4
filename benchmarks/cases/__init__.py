"""Benchmark cases: each module defines ``CASES``, a list of ``Case``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Case:
    """One thing to time: ``factory()`` builds a zero-argument callable once.

    For ``kind="async"`` the callable returns an awaitable; it is awaited in a
    tight loop inside one event loop. ``group`` puts ours beside the peers.
    """

    name: str
    group: str
    factory: Callable[[], Callable[[], Any]]
    kind: Literal["async", "sync"] = "async"
    ours: bool = False
    note: str = ""


async def target() -> int:
    """The trivial coroutine every async case wraps."""
    return 1


def sync_target() -> int:
    """The trivial function every sync case wraps."""
    return 1
