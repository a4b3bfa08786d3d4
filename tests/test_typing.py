"""What mypy --strict says about decorated functions (signatures survive; Fallback widens the result)."""

from __future__ import annotations

from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api")

HERE = Path(__file__).parent


def _mypy(*args: str) -> tuple[str, int]:
    out, err, status = api.run(["--strict", "--no-incremental", "--cache-dir=/dev/null", *args])
    return out + err, status


def test_the_typed_usages_check() -> None:
    out, status = _mypy(str(HERE / "typing"))
    assert status == 0, out


def test_a_fallback_of_none_cannot_pass_as_the_declared_result(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from resilient import Fallback\n\n"
        "@Fallback(None)\n"
        "async def names() -> list[str]:\n"
        "    return ['a']\n\n"
        "async def use() -> list[str]:\n"
        "    return await names()\n"
    )
    out, status = _mypy(str(bad))
    assert status == 1
    assert 'Incompatible return value type (got "list[str] | None", expected "list[str]")' in out
