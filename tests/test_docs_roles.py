"""docs/sphinx_roles.py turns the docstrings' Sphinx roles into mkdocs-autorefs cross-references."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

griffe = pytest.importorskip("griffe")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
import sphinx_roles  # noqa: E402

del sys.path[0]


@pytest.fixture(scope="module")
def package() -> griffe.Module:
    ext = sphinx_roles.SphinxRoles(docs_dir=str(ROOT / "docs"))
    return griffe.load(
        "resilient", search_paths=[str(ROOT)], extensions=griffe.load_extensions(ext), resolve_aliases=False
    )


def _docstrings(obj: griffe.Object) -> list[tuple[str, str]]:
    found = [(obj.path, obj.docstring.value)] if obj.docstring else []
    for member in obj.members.values():
        if not member.is_alias:
            found += _docstrings(member)
    return found


def test_no_role_is_left_in_any_docstring(package: griffe.Module) -> None:
    left = [(path, m[0]) for path, doc in _docstrings(package) for m in sphinx_roles.ROLE.finditer(doc)]
    assert left == []


def test_a_rendered_target_becomes_a_link(package: griffe.Module) -> None:
    # "Every policy derives from :class:`Policy`" in resilient.policy: resolved in the module's scope.
    doc = package["policy"].docstring.value
    assert "[`Policy`][resilient.policy.Policy]" in doc


def test_tilde_shows_the_last_component_and_resolves_through_aliases(package: griffe.Module) -> None:
    # resilient.Retry is a re-export: the link names where the object is rendered.
    docs = "\n".join(doc for _, doc in _docstrings(package))
    assert "[`Retry`][resilient.retry.Retry]" in docs


def test_an_external_or_unrendered_target_becomes_code(package: griffe.Module) -> None:
    doc = package["timeout"].docstring.value
    assert "`asyncio.timeout()`" in doc
    assert "][asyncio" not in doc


def test_rendered_roots_are_the_directives_of_the_docs() -> None:
    roots = sphinx_roles.rendered_roots(ROOT / "docs")
    assert {"resilient.policy", "resilient.breaker", "resilient.httpx"} <= roots


def test_an_args_entry_naming_several_parameters_is_split() -> None:
    doc = "Limit.\n\nArgs:\n    rate, per: as RateLimiter,\n        per key.\n    key: the key.\n\nName, clock: prose."
    assert sphinx_roles.split_shared_entries(doc) == (
        "Limit.\n\nArgs:\n    rate: as RateLimiter,\n    per: as RateLimiter,\n        per key.\n    key: the key.\n\n"
        "Name, clock: prose."
    )
