"""What the distributions ship is usable on its own."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_an_sdist_that_ships_the_docs_ships_what_builds_them() -> None:
    include = PYPROJECT["tool"]["hatch"]["build"]["targets"]["sdist"]["include"]
    assert "docs" in include
    # mkdocs.yml names the pages, the theme and the griffe extension (docs/sphinx_roles.py).
    assert "mkdocs.yml" in include
    assert "resilient" in include


def test_the_readme_test_command_ships_with_the_tests() -> None:
    include = PYPROJECT["tool"]["hatch"]["build"]["targets"]["sdist"]["include"]
    assert "tests" in include
    assert {"Makefile", ".ci"} <= set(include)


def test_the_demo_extra_holds_what_the_demo_imports() -> None:
    # `make demo` installs only this extra.
    demo = " ".join(PYPROJECT["project"]["optional-dependencies"]["demo"])
    for package in ("httpx", "uvicorn", "starlette", "rich"):
        assert package in demo
