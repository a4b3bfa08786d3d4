"""``python -m resilient`` / the ``resilient`` command."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``resilient`` command."""
    from resilient import __version__

    parser = argparse.ArgumentParser(prog="resilient", description="resilient: resilience policies for Python services")
    parser.add_argument("--version", action="version", version=f"resilient {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the fault-scenario demo and write an HTML report", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from resilient.demo import main as demo_main

        return demo_main(rest)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
