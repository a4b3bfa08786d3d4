"""The sync shell of Retry is its async shell without ``await``: checked, so that the twins cannot drift.

Every decision lives in :class:`resilient.retry.engine.RetryEngine`; what is
left in :meth:`Retry.build_async` and :meth:`Retry.build_sync` is the call,
the sleep and the hand-off to the engine. This test turns the async shell
into its sync form (httpcore's ``unasync`` rules) and compares syntax trees,
docstrings left out: a fix made to one shell and not to the other fails here.
"""

from __future__ import annotations

import inspect

from resilient.retry.policy import Retry
from tests.shells_helpers import POLICY_UNASYNC
from tests.shells_helpers import syntax_tree as _tree

# Applied in order to the async source (unasync's replacements for this module).
UNASYNC = [
    *POLICY_UNASYNC,
    (".asleep(", ".sleep("),
    ("_passthrough_async(fn)", "fn"),
    ("_notify_async(", "_notify_sync("),
]


def test_the_sync_shell_is_the_async_shell_without_await() -> None:
    source = inspect.getsource(Retry.build_async)
    for old, new in UNASYNC:
        source = source.replace(old, new)
    assert _tree(source) == _tree(inspect.getsource(Retry.build_sync))


def test_the_check_would_see_a_drift() -> None:
    """The comparison is not vacuous: a one-token change in a shell is a different tree."""
    sync = inspect.getsource(Retry.build_sync)
    assert "run.failed_with(exc, t0)" in sync
    assert _tree(sync) != _tree(sync.replace("run.failed_with(exc, t0)", "run.failed_with(exc, 0.0)"))
