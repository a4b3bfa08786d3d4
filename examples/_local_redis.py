"""A throwaway redis-server on a free port of 127.0.0.1, for the examples that share state through Redis.

Not part of resilient: in production the stores point at your Redis. The
examples import :func:`local_redis` so that each one runs on its own server
and leaves nothing behind. Run alone, this script starts a server, prints
its URL and stops it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def local_redis(needed_for: str = "this example") -> Iterator[str | None]:
    """The URL of a fresh redis-server, stopped and removed on exit.

    ``None`` (after printing why) when no ``redis-server`` is installed, so
    that the example can skip its Redis part and still exit 0.
    """
    binary = shutil.which("redis-server") or shutil.which("/usr/bin/redis-server")
    if binary is None:
        print(f"redis-server is not installed; {needed_for} needs it (apt-get install redis-server). Skipping.")
        yield None
        return
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="resilient-example-")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not _answers_ping(port):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        try:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:  # never leave a server behind
                proc.kill()
                proc.wait()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    with local_redis("this script") as url:
        if url is not None:
            print(f"redis-server answered on {url}; stopping it")
