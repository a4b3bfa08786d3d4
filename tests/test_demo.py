"""The ``resilient demo`` command, its parts, and the scenario benchmark's smoke run."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from resilient.demo.load import Target, classify, drive
from resilient.demo.metrics import open_spans, percentile
from resilient.demo.report import breaker_chart, line_chart
from resilient.demo.transport import LoopbackTransport
from resilient.demo.upstream import SCENARIOS, Instance, UpstreamApp

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


# -- end to end ---------------------------------------------------------------


def test_demo_short_run_writes_report_with_charts_and_table(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    proc = _run(
        "-m",
        "resilient",
        "demo",
        "--scenario",
        "outage",
        "--scenario",
        "rate-limited",
        "--duration",
        "2",
        "--rate",
        "100",
        "--grace",
        "1",
        "--plain",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert f"report: {out}" in proc.stdout
    # The terminal table, one row per scenario and configuration.
    assert "ampl." in proc.stdout
    assert proc.stdout.count("unprotected") >= 2
    assert "Rate-limited upstream" in proc.stdout
    # Plain output fits 100 columns (a path may not: it cannot be broken).
    assert all(len(line) <= 100 for line in proc.stdout.splitlines() if not line.startswith("report: "))
    # Each scenario's summary opens with what resilience bought.
    assert proc.stdout.count("resilient standard against unprotected: ") >= 4
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    # Self-contained: nothing to fetch.
    assert "<script" not in html
    assert "<link" not in html
    assert 'src="' not in html
    for needle in (
        "Success rate per",
        "Requests received by the upstream per second",
        "Latency p50 per",
        "Latency p99 per",
        "Circuit breaker state",
        "load ampl.",
        "Outage",
        "Rate-limited upstream",
        "<polyline",
    ):
        assert needle in html, needle
    # Four line charts and one breaker chart per scenario.
    assert html.count("<svg") == 2 * 5
    # A row per scenario in the overview table and one in each scenario's table, with figures.
    rows = re.findall(r"unprotected</td><td class=n>(\d+\.\d)%</td>", html)
    assert len(rows) == 4
    assert all(0 < float(r) <= 100 for r in rows)


def test_demo_exits_nonzero_when_the_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _run(
            "-m", "resilient", "demo", "--port", str(port), "--duration", "1", "--out", str(tmp_path / "r.html")
        )
    assert proc.returncode == 2
    assert "cannot start the flaky upstream" in proc.stderr
    assert f"cannot bind 127.0.0.1:{port}" in proc.stderr
    assert not (tmp_path / "r.html").exists()


def test_demo_rejects_an_unknown_scenario() -> None:
    proc = _run("-m", "resilient", "demo", "--scenario", "meteor", timeout=30)
    assert proc.returncode != 0
    assert "unknown scenario 'meteor'" in proc.stderr


def test_scenarios_benchmark_quick_runs() -> None:
    proc = _run("-m", "benchmarks.scenarios", "--quick", "--scenario", "brownout")
    assert proc.returncode == 0, proc.stderr
    assert "plain httpx" in proc.stdout
    assert "Brownout" in proc.stdout
    for peer in ("tenacity naive", "tenacity + aiobreaker", "pyresilience", "resilient"):
        assert peer in proc.stdout, peer


# -- the upstream -------------------------------------------------------------


def _instance(scenario: str, at: float, *, duration: float = 10.0, rate: float = 100.0) -> Instance:
    inst = Instance(f"{scenario}-x", SCENARIOS[scenario], duration, rate, seed=1)
    inst.t0 = time.monotonic() - at * duration
    return inst


async def _get_many(app: UpstreamApp, name: str, n: int) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://upstream") as client:
        return [await client.get(f"/{name}/item/{i}") for i in range(n)]


async def test_upstream_outage_fails_only_during_its_fault_phase() -> None:
    app = UpstreamApp()
    app.instances["before"] = _instance("outage", 0.1)
    app.instances["during"] = _instance("outage", 0.4)
    assert {r.status_code for r in await _get_many(app, "before", 5)} == {200}
    assert {r.status_code for r in await _get_many(app, "during", 5)} == {503}
    assert app.instances["during"].stats()["total"] == 5


async def test_upstream_outage_drops_connections_in_its_last_third() -> None:
    app = UpstreamApp()
    app.instances["late"] = _instance("outage", 0.52)
    # In-process the app's failure surfaces as an exception; under uvicorn the
    # connection is closed mid-answer (the end-to-end test sees "dropped").
    with pytest.raises(Exception) as caught:
        await _get_many(app, "late", 1)
    assert type(caught.value).__name__ == "_Dropped"
    assert sum(app.instances["late"].stats()["dropped"]) == 1


async def test_upstream_brownout_fails_about_30_percent() -> None:
    app = UpstreamApp()
    app.instances["b"] = _instance("brownout", 0.5, duration=100)
    statuses = [r.status_code for r in await _get_many(app, "b", 200)]
    assert 0.18 < statuses.count(503) / 200 < 0.42


async def test_upstream_rate_limit_answers_429_with_retry_after() -> None:
    app = UpstreamApp()
    app.instances["r"] = _instance("rate-limited", 0.5, duration=100, rate=50)
    responses = await _get_many(app, "r", 30)  # far faster than 37.5/s
    limited = [r for r in responses if r.status_code == 429]
    assert limited
    assert limited[0].headers["retry-after"] == "1"
    assert app.instances["r"].stats()["limited"][0] + sum(app.instances["r"].stats()["limited"][1:]) == len(limited)


async def test_upstream_overload_sheds_when_capacity_drops() -> None:
    app = UpstreamApp()
    inst = _instance("overload", 0.4, duration=100, rate=100)  # degraded: 1-2 workers of 20 ms
    app.instances["o"] = inst
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://upstream", timeout=5) as client:
        responses = await asyncio.gather(*(client.get(f"/o/item/{i}") for i in range(80)))
    codes = [r.status_code for r in responses]
    assert 200 in codes
    assert 503 in codes
    assert inst.busy == 0
    assert not inst.waiters


async def test_upstream_control_endpoints() -> None:
    app = UpstreamApp()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://upstream") as client:
        spec = {"name": "t", "scenario": "slow-tail", "duration": 5, "rate": 10, "seed": 3}
        assert (await client.post("/__start", content=json.dumps(spec))).status_code == 200
        assert (await client.post("/__start", content=b"{}")).status_code == 400
        assert (await client.get("/t/item/1")).status_code == 200
        stats = (await client.get("/__stats", params={"name": "t"})).json()
        assert stats["total"] == 1
        assert stats["scenario"] == "slow-tail"
        assert (await client.get("/__stats", params={"name": "nope"})).status_code == 404
        assert (await client.get("/nope/item/1")).status_code == 404


# -- load, metrics, charts ----------------------------------------------------


async def test_drive_is_open_loop_and_records_every_call() -> None:
    async def slow(key: int) -> str:
        await asyncio.sleep(0.2)  # much slower than the schedule
        return "ok"

    async def failing(key: int) -> str:
        raise httpx.ConnectError("refused")

    targets = [Target("slow", slow), Target("failing", failing)]
    started = time.monotonic()
    await drive(targets, rate=100, duration=0.3, grace=1.0)
    assert time.monotonic() - started < 1.0  # calls overlapped: no closed loop
    assert len(targets[0].records) == 30
    assert len(targets[1].records) == 30
    assert {k for _, _, k in targets[0].records} == {"ok"}
    assert {k for _, _, k in targets[1].records} == {"connect_error"}
    dues = sorted(d for d, _, _ in targets[0].records)
    assert dues[0] == 0
    assert math.isclose(dues[-1], 0.29, abs_tol=1e-9)


async def test_drive_cancels_what_outlives_the_grace() -> None:
    async def stuck(key: int) -> str:
        await asyncio.sleep(30)
        return "ok"

    target = Target("stuck", stuck)
    await drive([target], rate=20, duration=0.1, grace=0.1)
    assert [k for _, _, k in target.records] == ["unfinished", "unfinished"]
    assert target.inflight == 0


def test_classify_names_failures() -> None:
    from resilient.errors import BulkheadFullError, CircuitOpenError

    request = httpx.Request("GET", "http://x/")
    response = httpx.Response(503, request=request)
    assert classify(CircuitOpenError("open")) == "circuit_open"
    assert classify(BulkheadFullError("full")) == "bulkhead_full"
    assert classify(httpx.HTTPStatusError("x", request=request, response=response)) == "http_503"
    assert classify(httpx.ReadTimeout("slow")) == "timeout"
    assert classify(ValueError("x")) == "ValueError"


def test_percentile_and_open_spans() -> None:
    assert math.isnan(percentile([], 0.5))
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    changes = [(1.0, "open"), (6.0, "half_open"), (6.01, "open"), (11.0, "half_open"), (11.02, "closed")]
    assert open_spans(changes, 20.0) == [(1.0, 6.0), (6.01, 11.0)]
    assert open_spans([(2.0, "open")], 9.0) == [(2.0, 9.0)]


def test_charts_draw_lines_gaps_and_breaker_states() -> None:
    svg = line_chart(
        "p99",
        [("a", "#000", [0.01, math.nan, 0.02, 0.5]), ("b", "#111", [math.nan] * 4)],
        seconds=4,
        unit="s",
        log=True,
    )
    assert svg.startswith("<svg")
    assert svg.endswith("</svg>")
    assert svg.count("<polyline") == 1
    assert svg.count("<circle") == 1
    strips = breaker_chart([("x", True, [(1.0, "open"), (3.0, "closed")]), ("y", False, [])], seconds=5)
    assert 'data-state="open"' in strips
    assert "no breaker" in strips


# -- the loopback transport ---------------------------------------------------


async def _serve(handler: object) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)  # type: ignore[arg-type]
    return server, server.sockets[0].getsockname()[1]


async def test_transport_reuses_connections_and_reads_chunked_bodies() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            if b"/chunked" in head:
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy")
            await writer.drain()
        writer.close()

    server, port = await _serve(handler)
    async with server, httpx.AsyncClient(transport=LoopbackTransport(), base_url=f"http://127.0.0.1:{port}") as c:
        first = await c.get("/plain")
        second = await c.get("/chunked")
        third = await c.get("/plain")
    assert (first.status_code, first.text) == (503, "busy")
    assert (second.status_code, second.text) == (200, "abcde")
    assert third.status_code == 503
    assert connections == 1


async def test_transport_maps_failures_to_httpx_exceptions() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    async with httpx.AsyncClient(transport=LoopbackTransport()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{closed_port}/")

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)
        writer.close()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server, port = await _serve(silent)
    async with server, httpx.AsyncClient(transport=LoopbackTransport(), timeout=0.2) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(f"http://127.0.0.1:{port}/")
    server, port = await _serve(hang_up)
    async with server, httpx.AsyncClient(transport=LoopbackTransport()) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"http://127.0.0.1:{port}/")


def test_progress_display_renders_live_and_plain(capsys: pytest.CaptureFixture[str]) -> None:
    import io

    from rich.console import Console

    from resilient.demo import _Progress
    from resilient.demo.configs import CONFIGS
    from resilient.demo.runner import ConfigRun, ScenarioRun

    async def call(key: int) -> str:
        return "ok"

    runs = [ConfigRun(CONFIGS[0], target=Target("plain", call)), ConfigRun(CONFIGS[2], note="skipped")]
    runs[0].target.records.extend([(0.1, 0.01, "ok"), (0.2, 0.02, "http_503")])  # type: ignore[union-attr]
    scenario_run = ScenarioRun(SCENARIOS["outage"], 10.0, 100.0, runs)

    live = _Progress(1, plain=True)
    live.console = Console(file=io.StringIO(), force_terminal=True, width=120)
    live.console.print(live._render(scenario_run, 3.0, [("unprotected", 2, 0, 0.5, 0.5, "-")]))
    shown = live.console.file.getvalue()  # type: ignore[attr-defined]
    assert "Outage" in shown
    assert "unprotected" in shown
    assert "50.0%" in shown

    plain = _Progress(1, plain=True)
    plain.last_plain = 0.0
    plain.tick(scenario_run, 3.0)
    assert "outage  3.0/10 s: unprotected ok 50%" in capsys.readouterr().out
