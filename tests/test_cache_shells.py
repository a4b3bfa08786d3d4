"""StaleCache's sync shell is its async shell without ``await``: checked, so that the twins cannot drift.

The fresh-hit path of :class:`~resilient.cache.StaleCache` (build the key,
read the store, serve a fresh entry, else hand off to the slow path) is
written twice for speed: once in :meth:`StaleCache.build_async`, once in
:meth:`StaleCache.build_sync`. Everything past a fresh hit lives in the slow
paths. The async text differs only by awaiting an async store's ``get``; this
test removes that, applies httpcore-style ``unasync`` replacements and
compares syntax trees (docstrings left out).
"""

from __future__ import annotations

import inspect
import re

from resilient.cache import StaleCache
from tests.shells_helpers import POLICY_UNASYNC
from tests.shells_helpers import syntax_tree as _tree

# Applied in order to the async source.
UNASYNC = [
    *POLICY_UNASYNC,
    ("_slow_async", "_slow_sync"),
]
# What only the async shell has: an async store's get() returns an awaitable.
ASYNC_ONLY = [
    r"\n\s*store_async = self\._store_async",
    r"\n\s*if store_async:\n\s*entry = entry",
]
# What only the sync shell has: it refuses an async store at wrap time.
SYNC_ONLY = [r"\n\s*if self\._store_async:\n\s*raise TypeError\(.*\)"]


def _as_sync(source: str) -> str:
    for old, new in UNASYNC:
        source = source.replace(old, new)
    for pattern in ASYNC_ONLY:
        source, n = re.subn(pattern, "", source)
        assert n == 1, pattern
    return source


def _sync() -> str:
    source = inspect.getsource(StaleCache.build_sync)
    for pattern in SYNC_ONLY:
        source, n = re.subn(pattern, "", source)
        assert n == 1, pattern
    return source


def test_the_sync_shell_is_the_async_shell_without_await() -> None:
    assert _tree(_as_sync(inspect.getsource(StaleCache.build_async))) == _tree(_sync())


def test_the_check_would_see_a_drift() -> None:
    """The comparison is not vacuous: a one-token change in a shell is a different tree."""
    sync = _sync()
    assert "if age < ttl:" in sync
    assert _tree(sync) != _tree(sync.replace("if age < ttl:", "if age <= ttl:"))
