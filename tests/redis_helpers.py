"""A private redis-server (or a private Redis Cluster) for tests: start, kill, pause, resume, restart.

Tests never touch a system Redis (6379): each :class:`RedisServer` runs its
own ``redis-server`` on a free port of 127.0.0.1 with persistence off, and
the fixtures stop it at the end; :class:`LocalCluster` runs three of them in
cluster mode. When the binary is missing, the tests that need it are skipped
with a reason that says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import redis as sync_redis

__all__ = [
    "READY",
    "REDIS_CLI",
    "REDIS_SERVER",
    "LocalCluster",
    "RedisServer",
    "free_port",
    "redis_cluster",
    "redis_server",
    "require_redis_server",
    "run_together",
    "running_cluster",
    "running_redis",
]

#: The redis-server binary, or ``None`` when the machine has none.
REDIS_SERVER: str | None = (
    "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else shutil.which("redis-server")
)

#: redis-cli, which makes the cluster when present (without it, the cluster is made with CLUSTER commands).
REDIS_CLI: str | None = "/usr/bin/redis-cli" if os.access("/usr/bin/redis-cli", os.X_OK) else shutil.which("redis-cli")


def require_redis_server() -> str:
    """Return the binary's path, or skip the calling test with the reason."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server binary not found (looked at /usr/bin/redis-server and on PATH)")
    return REDIS_SERVER


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port() -> int:
    """A free port whose cluster bus port (10000 higher, as every Redis version takes it) is free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 <= 65535 and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair (P, P + 10000) found for a cluster node")


def ping(port: int, timeout: float = 0.2, auth: tuple[str, str] | None = None) -> bool:
    """Whether a Redis on ``port`` answers PING right now (raw RESP, no client library)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            if auth is not None:
                s.sendall(f"AUTH {auth[0]} {auth[1]}\r\n".encode())
                if not s.recv(64).startswith(b"+OK"):
                    return False
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process on a fixed port, which survives restarts.

    ``kill()`` sends SIGKILL (a crash), ``pause()``/``resume()`` send
    SIGSTOP/SIGCONT (a server that accepts connections but never answers,
    i.e. a slow one), ``restart()`` starts a fresh process on the same port.
    ``extra`` are more ``redis-server`` options (``"--requirepass", "pw"``,
    ``"--user", "app on >pw ~* +@all"``); with ``password`` the readiness
    check authenticates as ``user``.
    """

    def __init__(
        self,
        binary: str,
        port: int | None = None,
        extra: tuple[str, ...] = (),
        password: str | None = None,
        user: str = "default",
    ) -> None:
        self.binary = binary
        self.port = port if port is not None else free_port()
        self.extra = extra
        self.password = password
        self.user = user
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="resilient-redis-")
        self.paused = False

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("redis-server is already running")
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir,
            "--protected-mode",
            "no",
            "--loglevel",
            "warning",
            *self.extra,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.paused = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ping(self.port, auth=None if self.password is None else (self.user, self.password)):
                return
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"redis-server exited with {self.proc.returncode} on port {self.port}: {err}")
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING on port {self.port} within {timeout} s")

    def kill(self) -> None:
        """SIGKILL the server (a crash) and reap it; the port is then refused."""
        if self.proc is None:
            return
        if self.paused:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
            self.paused = False
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: connections are still accepted by the kernel, nothing answers."""
        if self.proc is None:
            raise RuntimeError("redis-server is not running")
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self.proc is None:
            raise RuntimeError("redis-server is not running")
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def restart(self) -> None:
        """Kill the server if it runs and start a new one on the same port."""
        self.kill()
        for attempt in range(50):
            try:
                self.start()
                return
            except RuntimeError:
                # The port can linger for a moment after a SIGKILL.
                if attempt == 49:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL) and clean up."""
        if self.proc is not None:
            if self.paused:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(signal.SIGCONT)
                self.paused = False
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def __repr__(self) -> str:
        state = "stopped" if self.proc is None else ("paused" if self.paused else "running")
        return f"RedisServer(port={self.port}, {state})"


@contextlib.contextmanager
def running_redis(
    binary: str | None = None, extra: tuple[str, ...] = (), password: str | None = None, user: str = "default"
) -> Iterator[RedisServer]:
    """Start a private redis-server on a free port; stop it on exit.

    A free port can be taken between the check and the start, so starting
    is retried on a new port a few times. ``extra``, ``password`` and
    ``user``: as for :class:`RedisServer`.
    """
    binary = binary or require_redis_server()
    last: Exception | None = None
    for _ in range(3):
        server = RedisServer(binary, extra=extra, password=password, user=user)
        try:
            server.start()
        except RuntimeError as exc:
            server.stop()
            last = exc
            continue
        try:
            yield server
        finally:
            server.stop()
        return
    raise RuntimeError(f"could not start redis-server: {last}")


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for one test (skipped when the binary is missing)."""
    with running_redis() as server:
        yield server


#: Slots in a Redis Cluster.
SLOTS = 16384


class LocalCluster:
    """``masters`` redis-servers in cluster mode on free ports, no replicas, every slot assigned.

    Each node keeps its cluster configuration (``nodes.conf``) in its own
    directory, so :meth:`restart` of a killed master brings back the same
    node with the same slots. ``cluster-require-full-coverage no``: the
    masters that live keep serving their slots while one is down, so a test
    knows which keys an outage takes away (with ``yes``, every node starts
    answering CLUSTERDOWN one node timeout after the kill: a race).
    """

    def __init__(self, binary: str, masters: int = 3) -> None:
        self.servers = [
            RedisServer(
                binary,
                port=free_cluster_port(),
                extra=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-require-full-coverage",
                    "no",
                ),
            )
            for _ in range(masters)
        ]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...``, every node a startup node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    @property
    def node_urls(self) -> list[str]:
        """Each node's own ``redis://`` URL (a plain client on one node)."""
        return [s.url for s in self.servers]

    def start(self, timeout: float = 30.0) -> None:
        """Start the nodes, assign the slots and wait until every node says ``cluster_state:ok``."""
        for server in self.servers:
            server.start()
        addresses = [f"127.0.0.1:{s.port}" for s in self.servers]
        if REDIS_CLI is not None:
            subprocess.run(
                [REDIS_CLI, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=timeout,
            )
        else:
            self._create_by_hand()
        self.wait_ok(timeout)

    def _create_by_hand(self) -> None:
        # What redis-cli --cluster create does for masters only: even slot ranges, then MEET.
        n = len(self.servers)
        for i, server in enumerate(self.servers):
            with self._client(server) as c:
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", i * SLOTS // n, (i + 1) * SLOTS // n - 1)
        with self._client(self.servers[0]) as c:
            for server in self.servers[1:]:
                c.execute_command("CLUSTER", "MEET", "127.0.0.1", server.port)

    @staticmethod
    def _client(server: RedisServer) -> contextlib.closing[sync_redis.Redis]:
        import redis as sync_redis  # the redis extra: imported by the cluster tests only

        return contextlib.closing(sync_redis.Redis(port=server.port, socket_timeout=5, decode_responses=True))

    def _ok(self, server: RedisServer) -> bool:
        import redis as sync_redis

        try:
            with self._client(server) as c:
                info = c.execute_command("CLUSTER", "INFO")
                slots = c.execute_command("CLUSTER", "SLOTS")
        except sync_redis.RedisError:
            return False
        text = info if isinstance(info, str) else str(info)
        owners = {int(r[2][1]) for r in slots}
        live = {s.port for s in self.servers if s.proc is not None}
        return "cluster_state:ok" in text and sum(r[1] - r[0] + 1 for r in slots) == SLOTS and live <= owners

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every running node serves and knows every slot (a restarted master waits 2 s)."""
        end = time.monotonic() + timeout
        while not all(self._ok(s) for s in self.servers if s.proc is not None):
            if time.monotonic() > end:
                raise RuntimeError(f"the cluster did not become ok within {timeout} s: {self.servers}")
            time.sleep(0.05)

    def owner(self, key: str) -> RedisServer:
        """The master that serves ``key``'s slot."""
        from redis.crc import key_slot

        slot = key_slot(key.encode())
        for server in self.servers:
            if server.proc is None:
                continue
            with self._client(server) as c:
                for start, end, master, *_ in c.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        port = int(master[1])
                        return next(s for s in self.servers if s.port == port)
        raise RuntimeError(f"no live node knows who serves slot {slot}")

    def restart(self, server: RedisServer, timeout: float = 30.0) -> None:
        """Start a killed master again (same port, same nodes.conf) and wait until it serves its slots."""
        server.restart()
        self.wait_ok(timeout)

    def stop(self) -> None:
        """Stop every node."""
        for server in self.servers:
            server.stop()

    def __repr__(self) -> str:
        return f"LocalCluster({self.servers})"


@contextlib.contextmanager
def running_cluster(masters: int = 3) -> Iterator[LocalCluster]:
    """Start a private Redis Cluster of ``masters`` masters on free ports; stop it on exit."""
    binary = require_redis_server()
    last: Exception | None = None
    for _ in range(3):
        cluster = LocalCluster(binary, masters)
        try:
            cluster.start()
        except (RuntimeError, subprocess.SubprocessError) as exc:
            # A free port taken between the check and the start; try new ones.
            cluster.stop()
            last = exc
            continue
        try:
            yield cluster
        finally:
            cluster.stop()
        return
    raise RuntimeError(f"could not start a Redis Cluster: {last}")


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """The URL of a redis-server shared by one test module (the model tests' many examples)."""
    with running_redis() as server:
        yield server.url


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    """The URL of a three-master Redis Cluster shared by one test module."""
    with running_cluster() as cluster:
        yield cluster.url


@pytest.fixture
def redis_cluster() -> Iterator[LocalCluster]:
    """A private three-master Redis Cluster for one test (skipped when redis-server is missing)."""
    with running_cluster() as cluster:
        yield cluster


async def eventually(predicate: Callable[[], bool], within: float = 3.0) -> None:
    """Poll a condition that a background task (a Redis probe) will make true."""
    end = time.monotonic() + within
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def redis_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The warnings logged on ``resilient.redis``."""
    return [r for r in caplog.records if r.name == "resilient.redis" and r.levelno == logging.WARNING]


#: For the code of :func:`run_together`: call ``ready()`` once set up; it returns when every process is.
READY = """
import sys as _sys


def ready():
    _sys.stdout.write("ready\\n")
    _sys.stdout.flush()
    if _sys.stdin.readline() != "go\\n":
        raise SystemExit("no go")
"""

_ROOT = Path(__file__).resolve().parent.parent


def run_together(
    code: str,
    *args: str,
    n: int,
    timeout: float = 60.0,
    between: Callable[[], object] | None = None,
) -> list[str]:
    """Run ``n`` Python processes of ``code`` and release them at the same moment; their outputs.

    ``code`` (dedented; :data:`READY` prepended) calls ``ready()`` when set
    up: once all ``n`` have, ``between()`` runs (if given) and every process
    is told to go, with no wall-clock start time to miss on a loaded
    machine. Each process gets ``args`` and then its index (``0`` to
    ``n - 1``) as arguments; its output after ``ready`` is returned, stripped.
    """
    env = {**os.environ, "PYTHONPATH": str(_ROOT)}
    source = READY + textwrap.dedent(code)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", source, *args, str(i)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=_ROOT,
        )
        for i in range(n)
    ]
    try:
        end = time.monotonic() + timeout
        for p in procs:
            assert p.stdout is not None
            readable, _, _ = select.select([p.stdout], [], [], max(0.0, end - time.monotonic()))
            line = p.stdout.readline() if readable else b""
            if line != b"ready\n":
                p.kill()
                _, err = p.communicate(timeout=5)
                raise AssertionError(f"a worker did not get ready: {line!r} {err.decode(errors='replace')}")
        if between is not None:
            between()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            p.stdin.flush()
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, end - time.monotonic()))
            assert p.returncode == 0, err.decode(errors="replace")
            outs.append(out.decode().strip())
        return outs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate(timeout=5)
