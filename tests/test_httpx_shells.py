"""The sync transport's shells are the async ones without ``await``: checked, so that the twins cannot drift.

The decisions of the transports live in plain functions of
``resilient/httpx/_transport.py`` (``_begin``, ``_converted``, ``_finished``)
and ``_io.py`` (``_body``, ``_Body.full``) and in their shared base class: no
I/O, no awaits. What is left in each shell is the I/O those steps name
(sending, closing a response, reading a failure body) and, inline because it
runs on every response, the check whether a failure will be retried. This
test turns each async shell into its sync form (unasync-style replacements)
and compares syntax trees, docstrings left out: a fix made to one twin and not
to the other fails here.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from typing import Any

import pytest

from resilient.httpx import AsyncResilientTransport, ResilientTransport, _io, _transport
from tests.shells_helpers import syntax_tree, unasync

# Applied in order to the async source.
UNASYNC = [
    ("async def ", "def "),
    ("await ", ""),
    ("async for ", "for "),
    ("def aclose(", "def close("),
    (".aclose()", ".close()"),
    ("handle_async_request", "handle_request"),
    ("adrain(", "drain("),
    ("_AsyncReplay", "_SyncReplay"),
    ("httpx.AsyncByteStream", "httpx.SyncByteStream"),
    ("stream.__aiter__()", "iter(stream)"),
    ("__aenter__", "__enter__"),
    ("__aexit__", "__exit__"),
    ("AsyncResilientTransport", "ResilientTransport"),
]


def _is_hedging_branch(node: ast.stmt) -> bool:
    """The async transport's hand-off to a hedging pipeline, which the sync one refuses at construction."""
    return isinstance(node, ast.If) and ast.unparse(node.test) == "self._hedging is not None"


def _tree(source: str) -> str:
    return syntax_tree(source, drop=_is_hedging_branch)


TWINS: list[tuple[str, Callable[..., Any], Callable[..., Any]]] = [
    ("attempt", AsyncResilientTransport._make_attempt, ResilientTransport._make_attempt),
    ("call", AsyncResilientTransport.handle_async_request, ResilientTransport.handle_request),
    ("close", AsyncResilientTransport.aclose, ResilientTransport.close),
    ("enter", AsyncResilientTransport.__aenter__, ResilientTransport.__enter__),
    ("exit", AsyncResilientTransport.__aexit__, ResilientTransport.__exit__),
    ("drain", _io.adrain, _io.drain),
]


@pytest.mark.parametrize(("name", "async_", "sync"), TWINS, ids=[name for name, _, _ in TWINS])
def test_the_sync_shell_is_the_async_one_without_await(
    name: str, async_: Callable[..., Any], sync: Callable[..., Any]
) -> None:
    assert _tree(unasync(inspect.getsource(async_), UNASYNC)) == _tree(inspect.getsource(sync)), name


def test_the_engine_does_no_io_and_never_awaits() -> None:
    """The decisions are plain functions: no coroutine among them, and none sends, reads or closes."""
    steps = [_transport._begin, _transport._converted, _transport._finished]
    steps += [_io._body, _io._Body.full, _transport._TransportBase._open, _transport._TransportBase._built]
    for step in steps:
        assert not inspect.iscoroutinefunction(step), step
        source = inspect.getsource(step)
        for io in ("handle_request(", "handle_async_request(", "close(", "drain(", "await "):
            assert io not in source, (step, io)


def test_the_check_would_see_a_drift() -> None:
    """The comparison is not vacuous: a one-token change in a shell is a different tree."""
    sync = inspect.getsource(ResilientTransport.handle_request)
    assert "raise instead from exc.__cause__" in sync
    assert _tree(sync) != _tree(sync.replace("raise instead from exc.__cause__", "raise instead"))
    # Nor does leaving out the hedging branch hide anything else.
    source = inspect.getsource(AsyncResilientTransport.handle_async_request)
    assert _tree(unasync(source, UNASYNC)) != _tree(
        unasync(source.replace("if left is not None:", "if left:"), UNASYNC)
    )
