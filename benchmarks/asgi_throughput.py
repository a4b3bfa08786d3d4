"""Requests/s of a trivial ASGI app under uvicorn: bare vs behind ResilienceMiddleware.

Usage::

    .venv/bin/python -m benchmarks.asgi_throughput            # 3 rounds of 5 s each
    .venv/bin/python -m benchmarks.asgi_throughput --quick    # smoke run, a few seconds
    .venv/bin/python -m benchmarks.asgi_throughput --loadgen python   # without wrk

Two uvicorn servers run as subprocesses (one serving the bare app, one the
same app wrapped by ``ResilienceMiddleware`` with every part on: deadline
propagation, per-client rate limit, load shedding and request timeout, all
configured above the load so nothing is refused). The load comes from a
separate process: ``wrk`` when it is installed (``apt-get install wrk``),
else a small keep-alive HTTP/1.1 client written on raw asyncio streams. Each
request carries an ``x-resilient-deadline`` header, so the deadline path is
exercised. Rounds alternate between the two servers, so drift in the
machine's load hits both; the report gives the median of each and the ratio
(target: >= 0.95).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]

_BODY = b"ok"
_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
}


async def trivial_app(
    scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
) -> None:
    """The app under test: answers ``ok`` (lifespan is turned off in uvicorn)."""
    await send(_START)
    await send({"type": "http.response.body", "body": _BODY})


def build_app(kind: str) -> Any:
    """The bare app, or the app behind every part of ResilienceMiddleware (under its limits)."""
    if kind == "bare":
        return trivial_app
    from resilient.asgi import ResilienceMiddleware

    return ResilienceMiddleware(
        trivial_app,
        max_concurrent=1024,
        max_queued=64,
        queue_timeout=5,
        rate=1_000_000,
        burst=1_000_000,
        timeout=30,
        max_deadline=60,
        name=f"bench-{os.getpid()}",
    )


def serve(kind: str, port: int) -> None:
    """Run uvicorn in this process (the server subprocess)."""
    import uvicorn

    uvicorn.run(build_app(kind), host="127.0.0.1", port=port, log_level="error", access_log=False, lifespan="off")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux ``/proc``; 0.0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- load generators ----------------------------------------------------------

_WRK_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_WRK_TOTAL = re.compile(r"(\d+) requests in")


def load_wrk(port: int, seconds: float, connections: int) -> tuple[float, int, int]:
    """Requests/s, requests and non-2xx count measured by wrk."""
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "-H",
            "x-resilient-deadline: 30",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = _WRK_RPS.search(out)
    if m is None:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    bad = _WRK_NON2XX.search(out)
    total = _WRK_TOTAL.search(out)
    return float(m.group(1)), int(total.group(1)) if total else 0, int(bad.group(1)) if bad else 0


_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nx-resilient-deadline: 30\r\n\r\n"


async def _python_load(port: int, seconds: float, connections: int) -> tuple[float, int, int]:
    done = 0
    bad = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done, bad
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop:
                writer.write(_REQUEST)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                if not head.startswith(b"HTTP/1.1 200"):
                    bad += 1
                done += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return done / (time.perf_counter() - start), done, bad


def load_python(port: int, seconds: float, connections: int) -> tuple[float, int, int]:
    """Requests/s, requests and non-200 count from a raw-asyncio load generator in a subprocess."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.asgi_throughput",
            "--load-port",
            str(port),
            "--seconds",
            str(seconds),
            "--connections",
            str(connections),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    data = json.loads(out)
    return float(data["rps"]), int(data["done"]), int(data["bad"])


# -- the run --------------------------------------------------------------------


def run(rounds: int, seconds: float, connections: int, loadgen: str) -> dict[str, Any]:
    """Start both servers, alternate load rounds between them, and summarise."""
    load = load_wrk if loadgen == "wrk" else load_python
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for kind in ("bare", "resilient"):
            port = _free_port()
            proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.asgi_throughput", "--serve", kind, "--port", str(port)],
            )
            procs[kind] = (proc, port)
        for proc, port in procs.values():
            _wait_ready(port, proc)
        # Warm-up: imports, first connections.
        for _, port in procs.values():
            load(port, 1, connections)
        results: dict[str, list[float]] = {"bare": [], "resilient": []}
        cpu_us: dict[str, list[float]] = {"bare": [], "resilient": []}
        bad = 0
        for i in range(rounds):
            order = ("bare", "resilient") if i % 2 == 0 else ("resilient", "bare")
            for kind in order:
                proc, port = procs[kind]
                cpu0 = _cpu_seconds(proc.pid)
                rps, done, non2xx = load(port, seconds, connections)
                cpu = (_cpu_seconds(proc.pid) - cpu0) / done * 1e6 if done else 0.0
                results[kind].append(rps)
                cpu_us[kind].append(cpu)
                bad += non2xx
                print(f"  round {i + 1} {kind:<10} {rps:10.0f} req/s {cpu:8.1f} us CPU/request", file=sys.stderr)
    finally:
        for proc, _ in procs.values():
            proc.terminate()
        for proc, _ in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                proc.kill()
    bare = statistics.median(results["bare"])
    res = statistics.median(results["resilient"])
    bare_cpu = statistics.median(cpu_us["bare"])
    res_cpu = statistics.median(cpu_us["resilient"])
    return {
        "loadgen": loadgen,
        "rounds": rounds,
        "seconds": seconds,
        "connections": connections,
        "bare_rps": results["bare"],
        "resilient_rps": results["resilient"],
        "bare_median": bare,
        "resilient_median": res,
        "ratio": res / bare if bare else float("nan"),
        "bare_cpu_us": bare_cpu,
        "resilient_cpu_us": res_cpu,
        "cpu_ratio": bare_cpu / res_cpu if res_cpu else float("nan"),
        "non_2xx": bad,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 1 s")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    # Internal: the server and load-generator subprocesses.
    parser.add_argument("--serve", choices=("bare", "resilient"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--load-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.serve:
        serve(args.serve, args.port)
        return 0
    if args.load_port:
        rps, done, bad = asyncio.run(_python_load(args.load_port, args.seconds, args.connections))
        print(json.dumps({"rps": rps, "done": done, "bad": bad}))
        return 0

    if args.quick:
        args.rounds, args.seconds, args.connections = 1, 1.0, 8
    loadgen = args.loadgen
    if loadgen == "auto":
        loadgen = "wrk" if shutil.which("wrk") else "python"
    summary = run(args.rounds, args.seconds, args.connections, loadgen)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"ASGI throughput, trivial app under uvicorn ({platform.python_version()}, {os.cpu_count()} CPUs)")
    print(
        f"load: {summary['loadgen']}, {summary['connections']} connections, "
        f"{summary['rounds']} x {summary['seconds']:g} s per server, alternating"
    )
    print(f"  bare app                  {summary['bare_median']:10.0f} req/s (median)")
    print(f"  ResilienceMiddleware(all) {summary['resilient_median']:10.0f} req/s (median)")
    print(f"  ratio                     {summary['ratio']:10.3f}  (target >= 0.95)")
    print(
        f"  server CPU per request    {summary['bare_cpu_us']:7.1f} us bare, {summary['resilient_cpu_us']:.1f} us "
        f"with the middleware: ratio {summary['cpu_ratio']:.3f} (steadier than req/s on a shared machine)"
    )
    if summary["non_2xx"]:
        print(f"  WARNING: {summary['non_2xx']} responses were not 2xx (a limit was hit)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
