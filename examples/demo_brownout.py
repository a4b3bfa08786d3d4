"""The demo in miniature: a 30% brownout, unprotected vs the resilient presets.

Drives a flaky upstream (uvicorn on 127.0.0.1, a free port) for 3 seconds at
100 calls/s through three clients at once and writes the HTML report to a
temporary directory. ``resilient demo`` runs every scenario and client.

Run: python examples/demo_brownout.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from resilient.demo import main as demo


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "brownout.html"
        status = demo(
            [
                "--scenario=brownout",
                "--config=plain",
                "--config=standard",
                "--config=microsoft",
                "--duration=3",
                "--rate=100",
                "--grace=1",
                "--plain",
                f"--out={report}",
            ]
        )
        if status == 0:
            print(f"the report had {report.stat().st_size // 1024} KiB of HTML and inline SVG charts")
        return status


if __name__ == "__main__":
    sys.exit(main())
