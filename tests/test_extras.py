"""An integration imported without its extra names the extra to install."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _import_without(module: str, missing: list[str]) -> subprocess.CompletedProcess[str]:
    # A None entry in sys.modules makes `import name` raise ModuleNotFoundError,
    # as on a machine where the package is not installed.
    code = textwrap.dedent(
        f"""
        import sys
        for name in {missing!r}:
            sys.modules[name] = None
        import {module}
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
    ("module", "missing", "extra"),
    [
        ("resilient.httpx", ["httpx"], "httpx"),
        ("resilient.httpx", ["sniffio"], "httpx"),
        ("resilient.otel", ["opentelemetry"], "otel"),
        ("resilient.redis", ["redis"], "redis"),
    ],
)
def test_a_missing_extra_is_named(module: str, missing: list[str], extra: str) -> None:
    proc = _import_without(module, missing)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("resilient.extras.MissingExtraError: "), proc.stderr
    assert f"pip install 'resilient-toolkit[{extra}]'" in last
    assert f"{missing[0]!r} is not installed" in last


@pytest.mark.parametrize("module", ["resilient", "resilient.asgi"])
def test_what_needs_no_extra_imports_without_any(module: str) -> None:
    proc = _import_without(module, ["httpx", "sniffio", "opentelemetry", "redis", "starlette"])
    assert proc.returncode == 0, proc.stderr


def test_the_error_is_an_import_error_that_says_what_is_missing() -> None:
    from resilient.extras import MissingExtraError

    exc = MissingExtraError("resilient.httpx", "httpx", "sniffio")
    assert isinstance(exc, ModuleNotFoundError)  # `except ImportError:` around an optional import still works
    assert (exc.name, exc.module, exc.extra) == ("sniffio", "resilient.httpx", "httpx")
    assert "pip install -e '.[httpx]'" in str(exc)


def test_require_extra_names_the_extra_of_the_first_missing_package() -> None:
    from resilient.extras import MissingExtraError, require_extra

    require_extra("resilient.httpx", "httpx", "httpx", "sniffio")  # both installed: nothing happens
    with pytest.raises(MissingExtraError) as info:
        require_extra("resilient.x", "x", "json", "no_such_package_here")
    assert (info.value.name, info.value.module, info.value.extra) == ("no_such_package_here", "resilient.x", "x")
