"""Run httpx's and Starlette's own test suites with every transport / app wrapped by resilient.

    python -m benchmarks.peer_suites [--venv .peer-venv] [--work .peer-suites]

What it does, by itself:

1. builds a virtual environment (``--venv``) with this checkout installed
   (``-e .[all]``) and what the two suites need to run;
2. downloads the source distributions of the httpx and Starlette versions
   installed there (they carry the ``tests/`` folders) and unpacks them;
3. runs each suite plainly, then wrapped (``resilient_peer_plugin``):
   httpx with every ``Client``/``AsyncClient`` transport inside
   ``ResilientTransport``/``AsyncResilientTransport``, Starlette with every
   ``TestClient`` app inside ``ResilienceMiddleware``, both with their
   defaults; httpx once more without the deadline header;
4. prints, per suite, what passes and what fails that did not fail plainly,
   each new failure with the reason it is expected, and exits 1 if one has
   no known reason.

Expected differences (see docs/benchmarks.md, "Peers' own test suites"):

* httpx's trio runs: resilient is an asyncio library (its timers and
  hedging need the running asyncio loop), so they are deselected;
* exact-header assertions: the default transport sends the remaining
  deadline (``x-resilient-deadline``), which the suite's echo servers
  return; the third run, without that header, shows they pass;
* introspection of ``client._transport`` and its private ``_pool``: the
  wrapper is not an ``httpx.HTTPTransport``.

Failures of the plain run (the machine: no DNS, root ignoring file
permissions, another chardet) are reported and not held against anyone.
Needs the package registry; run by hand, never in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_DIR = Path(__file__).resolve().parent

# What the two suites import, beyond this package's own extras.
SUITE_DEPS = [
    "pytest",
    "trio",
    "trustme",
    "uvicorn",
    "chardet",
    "brotli",
    "zstandard",
    "h2",
    "socksio",
    "rich",
    "click",
    "pygments",
    "cryptography",
    "itsdangerous",
    "jinja2",
    "python-multipart",
    "pyyaml",
    "httpx2[zstd]",
    "blockbuster",
    "opentelemetry-sdk",
    "importlib-metadata",
]

# Test names whose failure under the wrapper has a known reason (module docstring).
INTROSPECTION = ("test_proxies_environ", "test_socks_proxy", "test_transport_for_request", "test_proxy_with_mounts")


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command, echoing it; its output is captured."""
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload, no-any-return]


def make_venv(venv: Path) -> Path:
    """The environment the suites run in (built once, reused once its install finished)."""
    python = venv / "bin" / "python"
    done = venv / ".resilient-peer-suites-installed"
    if not done.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-e", f"{ROOT}[all]", *SUITE_DEPS],
            check=True,
        )
        done.touch()
    return python


def fetch_suite(python: Path, package: str, work: Path) -> Path:
    """Unpack the sdist of the installed ``package`` version; return the source folder."""
    version = run([str(python), "-c", f"import {package}; print({package}.__version__)"]).stdout.strip()
    folder = work / f"{package}-{version}"
    if not (folder / "tests").is_dir():
        work.mkdir(parents=True, exist_ok=True)
        spec = f"{package}=={version}"
        subprocess.run(
            [str(python), "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", str(work), spec],
            check=True,
        )
        with tarfile.open(work / f"{package}-{version}.tar.gz") as tar:
            tar.extractall(work, filter="data")
    return folder


def outcomes(python: Path, folder: Path, label: str, env: dict[str, str], args: list[str]) -> dict[str, str]:
    """Run the suite once; map each test id to passed / failed / skipped.

    Refuses a run that did not finish (pytest's exit code beyond "some tests
    failed") and a wrapped run that wrapped nothing.
    """
    report = folder / f"junit-{label}.xml"
    counts = folder / f"wrapped-{label}.json"
    report.unlink(missing_ok=True)
    counts.unlink(missing_ok=True)
    full_env = {**os.environ, "PYTHONPATH": str(PLUGIN_DIR), "RESILIENT_WRAP_REPORT": str(counts), **env}
    cmd = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "resilient_peer_plugin"]
    result = run([*cmd, f"--junitxml={report}", *args, "tests"], cwd=folder, env=full_env)
    print(result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:])
    if result.returncode not in (0, 1) or not report.exists():
        raise SystemExit(f"the {label} run did not finish (exit {result.returncode}):\n{result.stderr[-2000:]}")
    if env.get("RESILIENT_WRAP"):
        got = json.loads(counts.read_text())
        print(f"  wrapped: {got['transports']} transports, {got['apps']} apps")
        if not any(got.values()):
            raise SystemExit(f"the {label} run wrapped nothing: the suite builds its objects elsewhere now")
    found: dict[str, str] = {}
    for case in ET.parse(report).iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        found[name] = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
    return found


def new_failures(plain: dict[str, str], wrapped: dict[str, str]) -> list[str]:
    """Tests that fail wrapped and did not fail plainly."""
    return sorted(t for t, o in wrapped.items() if o == "failed" and plain.get(t) != "failed")


def lost(plain: dict[str, str], wrapped: dict[str, str]) -> list[str]:
    """Tests that passed plainly but are skipped or missing wrapped (a pass that was never run)."""
    return sorted(t for t, o in plain.items() if o == "passed" and wrapped.get(t) in (None, "skipped"))


def summary(label: str, found: dict[str, str]) -> str:
    counts = {k: sum(1 for o in found.values() if o == k) for k in ("passed", "failed", "skipped")}
    return f"{label}: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"


def main() -> int:
    """Run both suites plain and wrapped; exit 1 on a failure with no known reason."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=ROOT / ".peer-venv")
    parser.add_argument("--work", type=Path, default=ROOT / ".peer-suites")
    opts = parser.parse_args()
    python = make_venv(opts.venv)
    unexplained: list[str] = []

    httpx_dir = fetch_suite(python, "httpx", opts.work)
    asyncio_only = ["-k", "not trio"]
    plain = outcomes(python, httpx_dir, "plain", {"RESILIENT_WRAP": ""}, asyncio_only)
    wrapped = outcomes(python, httpx_dir, "wrapped", {"RESILIENT_WRAP": "transport"}, asyncio_only)
    bare = outcomes(
        python,
        httpx_dir,
        "no-header",
        {"RESILIENT_WRAP": "transport", "RESILIENT_NO_DEADLINE_HEADER": "1"},
        asyncio_only,
    )
    print(f"\nhttpx {httpx_dir.name} (asyncio only)")
    for label, found in (("plain", plain), ("wrapped", wrapped), ("wrapped, no deadline header", bare)):
        print("  " + summary(label, found))
    for test in lost(plain, wrapped) + lost(plain, bare):
        unexplained.append(test)
        print(f"  not run wrapped: {test}: NO KNOWN REASON")
    for test in new_failures(plain, wrapped):
        if any(name in test for name in INTROSPECTION):
            reason = "inspects the client's transports (their type, identity or private _pool)"
        elif test not in new_failures(plain, bare):
            reason = "asserts the exact headers sent; passes without the deadline header"
        else:
            reason = "NO KNOWN REASON"
            unexplained.append(test)
        print(f"  new failure: {test}: {reason}")

    starlette_dir = fetch_suite(python, "starlette", opts.work)
    plain = outcomes(python, starlette_dir, "plain", {"RESILIENT_WRAP": ""}, [])
    wrapped = outcomes(python, starlette_dir, "wrapped", {"RESILIENT_WRAP": "app"}, [])
    print(f"\nstarlette {starlette_dir.name} (asyncio and trio)")
    for label, found in (("plain", plain), ("wrapped", wrapped)):
        print("  " + summary(label, found))
    for test in new_failures(plain, wrapped) + lost(plain, wrapped):
        unexplained.append(test)
        print(f"  new failure or not run: {test}: NO KNOWN REASON")

    print("\nunexplained failures:", len(unexplained))
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
