"""Run scenarios: start the upstream, drive every configuration, collect what happened."""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from resilient.demo.configs import Config, Unavailable
from resilient.demo.load import Target, drive
from resilient.demo.upstream import Scenario

__all__ = ["ConfigRun", "ScenarioRun", "Upstream", "UpstreamError", "record_event", "run_scenario"]


class UpstreamError(RuntimeError):
    """The upstream server could not be started (the port could not be bound...)."""


class Upstream:
    """The flaky upstream in a subprocess: ``with Upstream(port) as up: up.url``."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1", start_timeout: float = 20.0) -> None:
        self.host = host
        self.port = port
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None

    @property
    def url(self) -> str:
        """The root URL of the server."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Start the server and wait until it listens; :class:`UpstreamError` if it cannot."""
        env = dict(os.environ)
        # The child must import the same `resilient` as this process.
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        # stderr goes to a file: a pipe nobody reads would block the server once full.
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "resilient.demo.upstream", "--host", self.host, "--port", str(self.port)],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
        )
        line: list[str] = []
        stdout = self.proc.stdout
        assert stdout is not None
        reader = threading.Thread(target=lambda: line.append(stdout.readline()))
        reader.daemon = True
        reader.start()
        reader.join(self.start_timeout)
        first = line[0].strip() if line else ""
        if first.startswith("PORT "):
            self.port = int(first.split()[1])
            return
        self.stop(close_log=False)
        err = self._read_stderr()
        self._close_log()
        if first.startswith("ERROR "):
            raise UpstreamError(first[6:])
        raise UpstreamError(f"the upstream server did not start{': ' + err.strip() if err.strip() else ''}")

    def _read_stderr(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()[-2000:]

    def _close_log(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def stop(self, *, close_log: bool = True) -> None:
        """Stop the server (terminate, then kill if it lingers)."""
        proc, self.proc = self.proc, None
        if close_log:
            self._close_log()
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> Upstream:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class ConfigRun:
    """What one configuration did in one scenario."""

    config: Config
    note: str = ""
    target: Target | None = None
    upstream: dict[str, Any] = field(default_factory=dict)
    events: Counter[str] = field(default_factory=Counter)
    #: Breaker state changes: (seconds since start, "open" | "half_open" | "closed").
    breaker: list[tuple[float, str]] = field(default_factory=list)
    t0: float = 0.0

    @property
    def skipped(self) -> bool:
        """Whether the configuration could not run."""
        return self.target is None


@dataclass
class ScenarioRun:
    """One scenario, every configuration."""

    scenario: Scenario
    duration: float
    rate: float
    runs: list[ConfigRun]
    loop_lag_p99: float = 0.0
    loop_lag_max: float = 0.0
    wall: float = 0.0
    #: Seconds the calls still running after the load stops may take.
    grace: float = 0.0
    #: The load generator's event-loop lag, seconds, one sample per 20 ms of the run.
    lag: list[float] = field(default_factory=list)

    @property
    def inflight(self) -> int:
        """Calls running now, over every configuration."""
        return sum(r.target.inflight for r in self.runs if r.target is not None)


_current: contextvars.ContextVar[ConfigRun | None] = contextvars.ContextVar("resilient_demo_config", default=None)

_BREAKER_STATES = {"circuit_opened": "open", "circuit_half_opened": "half_open", "circuit_closed": "closed"}


def record_event(name: str) -> None:
    """Count an event (a ``resilient.events`` name) for the configuration running this call.

    ``circuit_opened`` / ``circuit_half_opened`` / ``circuit_closed`` also
    draw the breaker's state. Peers' listeners (benchmarks) call this too.
    """
    run = _current.get()
    if run is None:
        return
    state = _BREAKER_STATES.get(name)
    if state is not None:
        # Some peers report "open" on every rejected call: count transitions only.
        if (run.breaker[-1][1] if run.breaker else "closed") == state:
            return
        run.breaker.append((time.monotonic() - run.t0, state))
    run.events[name] += 1


def _listener(event: Any) -> None:
    record_event(event.name)


async def _lag_monitor(samples: list[float], interval: float = 0.02) -> None:
    # A ticker that measures how late the loop wakes it up: the delay every
    # call of the load generator suffers too, before it even starts.
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(interval)
        samples.append(loop.time() - before - interval)


async def _post_json(client: Any, path: str, payload: dict[str, Any]) -> None:
    response = await client.post(path, content=json.dumps(payload).encode())
    if response.status_code != 200:
        raise UpstreamError(f"the upstream refused {path}: {response.status_code} {response.text}")


async def run_scenario(
    scenario: Scenario,
    configs: Sequence[Config],
    upstream_url: str,
    *,
    duration: float,
    rate: float,
    seed: int,
    grace: float = 6.0,
    on_tick: Callable[[ScenarioRun, float], None] | None = None,
) -> ScenarioRun:
    """Drive every configuration at once against its own upstream instance."""
    import httpx

    from resilient import events

    result = ScenarioRun(scenario, duration, rate, [ConfigRun(c) for c in configs], grace=grace)
    built: list[tuple[ConfigRun, Any]] = []
    for run in result.runs:
        base = f"{upstream_url}/{scenario.name}-{run.config.key}"
        try:
            ready = run.config.build(base)
        except Unavailable as exc:
            run.note = str(exc)
            continue
        ctx = contextvars.copy_context()
        ctx.run(_current.set, run)
        run.target = Target(run.config.key, ready.call, ctx)
        built.append((run, ready))
    events.add_listener(_listener)
    lag = result.lag
    monitor: asyncio.Task[None] | None = None
    wall = time.monotonic()
    try:
        async with httpx.AsyncClient(base_url=upstream_url, timeout=10.0) as control:
            for run, _ in built:
                await _post_json(
                    control,
                    "/__start",
                    {
                        "name": f"{scenario.name}-{run.config.key}",
                        "scenario": scenario.name,
                        "duration": duration,
                        "rate": rate,
                        "seed": seed,
                    },
                )
            start = time.monotonic()
            for run, _ in built:
                run.t0 = start
            monitor = asyncio.create_task(_lag_monitor(lag))
            targets = [run.target for run, _ in built if run.target is not None]
            await drive(
                targets,
                rate=rate,
                duration=duration,
                seed=seed,
                grace=grace,
                on_tick=(lambda elapsed: on_tick(result, elapsed)) if on_tick is not None else None,
            )
            monitor.cancel()
            for run, _ in built:
                response = await control.get("/__stats", params={"name": f"{scenario.name}-{run.config.key}"})
                run.upstream = response.json()
    finally:
        if monitor is not None:
            monitor.cancel()
        events.remove_listener(_listener)
        for _, ready in built:
            await ready.aclose()
    if lag:
        ordered = sorted(lag)
        result.loop_lag_p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        result.loop_lag_max = ordered[-1]
    result.wall = time.monotonic() - wall
    return result
