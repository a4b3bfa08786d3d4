"""No module imports another module's private name (inside one subpackage is fine).

A private name (``_x``) is an implementation detail of the module that
defines it; integrations and policies talk to each other through public
names, so that any module can change its insides without breaking another.
The rule, checked on the source of every module of ``resilient``:

* ``from resilient.a import _x`` and ``resilient.a._x`` are refused unless
  the importing module lives in the same subpackage as ``resilient.a``
  (``resilient/httpx/_transport.py`` may use ``resilient/httpx/_rules.py``'s
  privates; ``resilient/asgi/`` may not use ``resilient/deadline.py``'s);
* importing a private *module* (``resilient.httpx._rules``) from outside its
  subpackage is refused likewise.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "resilient"

# Known violations left by the first wave, removed one by one; must only shrink.
ALLOWED: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _package(module: str, is_package: bool) -> str:
    return module if is_package else module.rpartition(".")[0]


def _is_private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def _allowed(here: str, here_pkg: str, owner: str) -> bool:
    """Whether module ``here`` may use the privates of ``owner`` (a module or package)."""
    if owner == here:
        return True
    owner_is_pkg = (ROOT.parent / owner.replace(".", "/")).is_dir()
    owner_pkg = owner if owner_is_pkg else owner.rpartition(".")[0]
    # The top-level package is not a subpackage: its modules are strangers to each other.
    if owner_pkg == "resilient":
        return False
    return here_pkg == owner_pkg or here_pkg.startswith(owner_pkg + ".")


def _private_target(target: str) -> tuple[str, str] | None:
    """For a dotted name, (owner, owner._private) at its first private part, or None."""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if _is_private(part):
            return ".".join(parts[:i]), ".".join(parts[: i + 1])
    return None


def violations() -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for path in sorted(ROOT.rglob("*.py")):
        here = _module_name(path)
        here_pkg = _package(here, path.name == "__init__.py")
        tree = ast.parse(path.read_text(), str(path))
        rel = str(path.relative_to(ROOT.parent))
        modules: dict[str, str] = {}  # local name -> resilient module it is bound to
        targets: list[str] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("resilient") and not node.level:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.append(full)
                    if (ROOT.parent / full.replace(".", "/")).with_suffix(".py").exists() or (
                        ROOT.parent / full.replace(".", "/")
                    ).is_dir():
                        modules[alias.asname or alias.name] = full
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("resilient"):
                        targets.append(alias.name)
                        if alias.asname:
                            modules[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in modules
                and _is_private(node.attr)
            ):
                targets.append(f"{modules[node.value.id]}.{node.attr}")
        for target in targets:
            hit = _private_target(target)
            if hit is not None and not _allowed(here, here_pkg, hit[0]):
                found.add((rel, hit[1]))
    return found


def test_no_module_imports_another_modules_private_name() -> None:
    new = violations() - ALLOWED
    assert not new, "private names imported across modules:\n" + "\n".join(f"  {a}: {b}" for a, b in sorted(new))


def test_the_allow_list_only_lists_real_violations() -> None:
    stale = ALLOWED - violations()
    assert not stale, "fixed, remove from ALLOWED:\n" + "\n".join(f"  {a}: {b}" for a, b in sorted(stale))
