"""What the shell drift tests share: a shell's syntax tree without its docstrings.

Each ``tests/test_*_shells.py`` turns an async shell's source into its sync
form (httpcore's ``unasync`` replacements, listed per module) and compares
the trees, so that a fix made to one twin and not to the other fails.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Callable, Iterable

#: The replacements every policy's shells share (each test adds its module's own).
POLICY_UNASYNC = [
    ("async def ", "def "),
    ("await ", ""),
    ("build_async", "build_sync"),
    ("AsyncWrapped", "SyncFn"),
    ("AsyncFn", "SyncFn"),
]


def unasync(source: str, replacements: Iterable[tuple[str, str]]) -> str:
    """``source`` with each ``(old, new)`` replacement applied in order: an async twin's text in its sync form."""
    for old, new in replacements:
        source = source.replace(old, new)
    return source


def syntax_tree(source: str, drop: Callable[[ast.stmt], bool] | None = None) -> str:
    """The dumped syntax tree of ``source`` (a function's text), every function's docstring left out.

    ``drop`` leaves out the statements of a function body that only one twin
    has by design (the async transport's hedging branch, say).
    """
    tree = ast.parse(textwrap.dedent(source))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and body:
            first = body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                body = body[1:]
            node.body = [stmt for stmt in body if drop is None or not drop(stmt)]
    return ast.dump(tree, include_attributes=False)
