""".ci/pythons finds the interpreters that run, not the names that exist."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNNING = f"{sys.version_info.major}.{sys.version_info.minor}"


def _pythons(tmp_path: Path, supported: str) -> list[str]:
    env = {
        "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),  # no ~/.pyenv
        "PYENV_ROOT": str(tmp_path / "no-pyenv"),
        "SUPPORTED": supported,
    }
    proc = subprocess.run(
        ["sh", str(ROOT / ".ci" / "pythons")], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    return proc.stdout.split()


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    if shutil.which("sh") is None:
        pytest.skip("no sh")
    path = tmp_path / "bin"
    path.mkdir()
    return path


def test_a_shim_that_refuses_to_run_is_skipped(tmp_path: Path, bin_dir: Path) -> None:
    # What a pyenv shim does for a version that is installed but not selected.
    shim = bin_dir / "python3.99"
    shim.write_text("#!/bin/sh\necho 'pyenv: python3.99: command not found' >&2\nexit 127\n")
    shim.chmod(0o755)
    (bin_dir / f"python{RUNNING}").symlink_to(sys.executable)
    assert _pythons(tmp_path, f"3.99 {RUNNING}") == [str(bin_dir / f"python{RUNNING}")]


def test_an_interpreter_of_another_version_under_the_name_is_skipped(tmp_path: Path, bin_dir: Path) -> None:
    (bin_dir / "python3.98").symlink_to(sys.executable)  # runs, but is not 3.98
    assert _pythons(tmp_path, "3.98") == []


def test_newest_first(tmp_path: Path, bin_dir: Path) -> None:
    (bin_dir / f"python{RUNNING}").symlink_to(sys.executable)
    found = _pythons(tmp_path, "3.13 3.12 3.11")
    assert str(bin_dir / f"python{RUNNING}") in found
    versions = [
        subprocess.run([py, "-c", "import sys; print(sys.version_info[1])"], capture_output=True, text=True).stdout
        for py in found
    ]
    assert [int(v) for v in versions] == sorted((int(v) for v in versions), reverse=True)
    assert os.path.isabs(found[0])
