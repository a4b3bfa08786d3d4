"""The sync shells of Bulkhead, AdaptiveConcurrency and AdaptiveThrottle are their async shells without ``await``.

Every decision lives in one engine per policy (the bulkhead's admission
engine, the limit algorithm, the throttle's window); what is left in the
wrappers and in :meth:`Bulkhead.enter` / :meth:`Bulkhead.enter_sync` is the
call, the wait and the hand-off. As for the breaker (tests/test_breaker_shells.py),
each async shell is turned into its sync form and the syntax trees are
compared, docstrings left out: a fix made to one twin and not the other fails here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from resilient.concurrency import AdaptiveConcurrency, Bulkhead
from resilient.throttle import AdaptiveThrottle
from tests.shells_helpers import POLICY_UNASYNC, unasync
from tests.shells_helpers import syntax_tree as _tree

# Applied in order to the async source.
UNASYNC = [
    *POLICY_UNASYNC,
    ("self.enter,", "self.enter_sync,"),
    ("self.enter\n", "self.enter_sync\n"),
    ("def enter(", "def enter_sync("),
    ("_TaskWaiter", "_ThreadWaiter"),
    ("_run_unslotted,", "_run_unslotted_sync,"),
    ("_run_unslotted(", "_run_unslotted_sync("),
    ("_run_unslotted\n", "_run_unslotted_sync\n"),
]

PAIRS: list[tuple[Callable[..., Any], Callable[..., Any]]] = [
    (Bulkhead.enter, Bulkhead.enter_sync),
    (Bulkhead.build_async, Bulkhead.build_sync),
    (Bulkhead._run_unslotted, Bulkhead._run_unslotted_sync),
    (AdaptiveConcurrency.build_async, AdaptiveConcurrency.build_sync),
    (AdaptiveThrottle.build_async, AdaptiveThrottle.build_sync),
]


@pytest.mark.parametrize(("async_shell", "sync_shell"), PAIRS, ids=lambda f: f.__qualname__)
def test_the_sync_shell_is_the_async_shell_without_await(
    async_shell: Callable[..., Any], sync_shell: Callable[..., Any]
) -> None:
    assert _tree(unasync(inspect.getsource(async_shell), UNASYNC)) == _tree(inspect.getsource(sync_shell))


def test_the_check_would_see_a_drift() -> None:
    """The comparison is not vacuous: a one-token change in a shell is a different tree."""
    sync = inspect.getsource(AdaptiveConcurrency.build_sync)
    assert "failed(how, start, exc)" in sync
    assert _tree(sync) != _tree(sync.replace("failed(how, start, exc)", "failed(how, 0.0, exc)"))


def test_the_old_module_paths_still_import_the_same_objects() -> None:
    """``resilient.bulkhead`` and ``resilient.adaptive`` are deprecated paths, kept as re-exports that warn."""
    import importlib
    import warnings

    import resilient
    import resilient.concurrency
    import resilient.throttle

    for path in ("resilient.bulkhead", "resilient.adaptive"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = importlib.import_module(path)
        with pytest.warns(DeprecationWarning, match=path):
            importlib.reload(module)  # whether imported before or not: it warns on import

    assert resilient.bulkhead.Bulkhead is resilient.concurrency.Bulkhead is resilient.Bulkhead
    assert resilient.adaptive.AdaptiveConcurrency is resilient.concurrency.AdaptiveConcurrency
    assert resilient.adaptive.AdaptiveThrottle is resilient.throttle.AdaptiveThrottle is resilient.AdaptiveThrottle
    assert resilient.bulkhead.__all__ == ["Bulkhead"]
    assert resilient.adaptive.__all__ == ["AdaptiveConcurrency", "AdaptiveThrottle"]
