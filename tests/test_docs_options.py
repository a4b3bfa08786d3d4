"""Each policy page's options table matches the class's signature.

A table follows a ``<!-- options: resilient.Name -->`` line and has the
columns ``option | default | meaning | valid range``. The rows name exactly
the constructor's parameters, and each default cell starts with the
signature's default in backticks (``required`` for a parameter without
one), so that a changed default or a new parameter cannot leave the page
behind.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!--\s*options:\s*(?P<target>[\w.]+)\s*-->\s*$")
HEADER = ["option", "default", "meaning", "valid range"]


def tables() -> list[tuple[str, str, list[list[str]]]]:
    """Every marked table of docs/: (page:line, target, rows)."""
    found = []
    for page in sorted((ROOT / "docs").rglob("*.md")):
        lines = page.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            match = MARKER.match(line)
            if not match:
                continue
            rows = []
            for row in lines[i + 1 :]:
                if not row.startswith("|"):
                    break
                rows.append([cell.strip() for cell in row.strip().strip("|").split("|")])
            found.append((f"{page.relative_to(ROOT)}:{i + 1}", match["target"], rows))
    return found


def resolve(target: str) -> Any:
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


def shown(default: Any) -> set[str]:
    """The spellings a page may use for a default."""
    if isinstance(default, type):
        return {default.__name__}
    if isinstance(default, str):
        return {repr(default), f'"{default}"'}
    return {repr(default)}


TABLES = tables()


def test_policy_pages_have_options_tables() -> None:
    # The pages converted to the one shape so far; each new page is added here.
    targets = {target for _, target, _ in TABLES}
    assert {
        "resilient.AdaptiveConcurrency",
        "resilient.Bulkhead",
        "resilient.CircuitBreaker",
        "resilient.Fallback",
        "resilient.Hedge",
        "resilient.Keyed",
        "resilient.KeyedRateLimiter",
        "resilient.RateLimiter",
        "resilient.Retry",
        "resilient.StaleCache",
        "resilient.Timeout",
    } <= targets


@pytest.mark.parametrize(("where", "target", "rows"), TABLES, ids=[where for where, _, _ in TABLES])
def test_options_table_matches_signature(where: str, target: str, rows: list[list[str]]) -> None:
    assert rows, f"{where}: no table after the marker"
    assert [cell.lower() for cell in rows[0]] == HEADER, f"{where}: columns must be {HEADER}"
    body = rows[2:]
    params = {
        name: p for name, p in inspect.signature(resolve(target)).parameters.items() if p.kind is not p.VAR_KEYWORD
    }
    documented = {}
    for row in body:
        assert len(row) == 4, f"{where}: row {row} does not have 4 cells"
        name = re.fullmatch(r"`(\w+)`", row[0])
        assert name, f"{where}: option cell {row[0]!r} is not one `name`"
        documented[name[1]] = row[1]
    assert list(documented) == list(params), f"{where}: the rows must be the parameters of {target}, in order"
    for name, cell in documented.items():
        default = params[name].default
        if default is inspect.Parameter.empty:
            assert cell.startswith("required"), f"{where}: {name} has no default; write 'required'"
            continue
        first = re.match(r"`([^`]*)`", cell)
        assert first, f"{where}: {name}'s default cell {cell!r} does not start with a `value`"
        assert first[1] in shown(default), (
            f"{where}: {name}'s default is {sorted(shown(default))[0]}, the page says {cell!r}"
        )
