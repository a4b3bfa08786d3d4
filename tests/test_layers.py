"""The architecture's layers, enforced: the core imports only the core, a policy never an integration.

docs/architecture.md draws three layers. They are kept by this test, not by
directories: the core's modules (``resilient.clock``, ``resilient.events``...)
are public import paths that users write, so they stay where they are, and
what keeps the core apart is that nothing in it may reach up.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "resilient"

#: The core every policy builds on (docs/architecture.md, "The core").
CORE = frozenset(
    {"clock", "deadline", "errors", "events", "extras", "policy", "testing", "timers", "validate", "window"}
)
#: The integrations: adapters over the engines, each with its optional dependency.
INTEGRATIONS = frozenset({"asgi", "httpx", "otel", "redis"})
#: Tools over everything: the registry builds pipelines from configuration, the demo runs scenarios.
TOOLS = frozenset({"__init__", "__main__", "demo", "pytest_plugin", "registry"})


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (ROOT.parent / rel).with_suffix(".py").exists() or (ROOT.parent / rel / "__init__.py").exists()


def _imports(path: Path) -> set[str]:
    """The resilient modules ``path`` imports (``from resilient import events`` counts as resilient.events)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "resilient")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "resilient":
                continue
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if _is_module(f"{node.module}.{a.name}"))
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    if top in CORE:
        return "core"
    if top in INTEGRATIONS:
        return f"integration {top}"
    if top in TOOLS:
        return "tool"
    return "policy"


GRAPH = {_module(p): _imports(p) for p in sorted(ROOT.rglob("*.py"))}


def test_every_module_has_a_layer_and_the_core_exists() -> None:
    assert {m.split(".")[1] for m in GRAPH if m.count(".") >= 1 and _layer(m) == "core"} == CORE
    assert {_layer(m) for m in GRAPH} >= {"core", "policy", "tool", *(f"integration {i}" for i in INTEGRATIONS)}


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _layer(m) == "core"))
def test_the_core_imports_only_the_core(module: str) -> None:
    up = sorted(d for d in GRAPH[module] if d != "resilient" and _layer(d) != "core")
    assert up == [], f"{module} reaches up out of the core"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _layer(m) == "policy"))
def test_a_policy_never_imports_an_integration_or_a_tool(module: str) -> None:
    up = sorted(d for d in GRAPH[module] if _layer(d).startswith("integration") or _layer(d) == "tool")
    assert up == [], f"{module} depends on an adapter: the engines must not know who drives them"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _layer(m).startswith("integration")))
def test_an_integration_never_imports_another(module: str) -> None:
    mine = _layer(module)
    other = sorted(d for d in GRAPH[module] if _layer(d).startswith("integration") and _layer(d) != mine)
    assert other == [], f"{module} imports another integration (each has its own optional dependency)"
