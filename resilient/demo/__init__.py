"""The ``resilient demo`` command (placeholder until the fault-scenario demo lands)."""

from __future__ import annotations

import argparse

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the demo; for now a short retry/fallback walk-through."""
    parser = argparse.ArgumentParser(prog="resilient demo")
    parser.parse_args(argv)
    import runpy
    from pathlib import Path

    examples = Path(__file__).resolve().parents[2] / "examples"
    for script in sorted(examples.glob("*.py")):
        print(f"== {script.name}")
        runpy.run_path(str(script), run_name="__main__")
    return 0
