"""A pytest plugin that runs httpx's or Starlette's own test suite through resilient.

Loaded by :mod:`benchmarks.peer_suites` with ``-p resilient_peer_plugin`` and
the environment variable ``RESILIENT_WRAP``:

* ``transport``: every transport an ``httpx.Client`` or ``httpx.AsyncClient``
  builds or is given (``transport=``, proxies, ``mounts=``) is wrapped in
  ``ResilientTransport`` / ``AsyncResilientTransport`` with the default
  pipeline;
* ``app``: every application a Starlette ``TestClient`` is given is wrapped in
  ``ResilienceMiddleware`` with its defaults (requests, websockets and the
  lifespan all go through it).

The wrapping happens where the suite's objects are built (httpx's
``Client._init_transport`` and ``_init_proxy_transport`` and the ``mounts``
argument, Starlette's ``TestClient.__init__``), so every test exercises the
wrapped path. With ``RESILIENT_WRAP_REPORT`` set to a path, the counts are
written there as JSON when the run ends.
"""

from __future__ import annotations

import json
import os
from typing import Any

WRAP = os.environ.get("RESILIENT_WRAP", "")
# "1": wrap without the deadline header the default transport adds, so that
# the suite's exact-header assertions show what else (if anything) differs.
NO_DEADLINE_HEADER = os.environ.get("RESILIENT_NO_DEADLINE_HEADER") == "1"
wrapped = {"transports": 0, "apps": 0}


def _wrap_transports() -> None:
    import httpx

    from resilient.httpx import AsyncResilientTransport, ResilientTransport

    def wrapping(cls: type, method: str, wrapper: type) -> None:
        original = getattr(cls, method)

        def build(self: Any, *args: Any, **kwargs: Any) -> Any:
            transport = original(self, *args, **kwargs)
            wrapped["transports"] += 1
            return _options(wrapper, transport)

        setattr(cls, method, build)

    for method in ("_init_transport", "_init_proxy_transport"):
        wrapping(httpx.Client, method, ResilientTransport)
        wrapping(httpx.AsyncClient, method, AsyncResilientTransport)

    # mounts= transports go straight into the client: wrap them on the way in.
    for cls, wrapper in ((httpx.Client, ResilientTransport), (httpx.AsyncClient, AsyncResilientTransport)):
        original_init = cls.__init__

        def init(self: Any, *args: Any, _init: Any = original_init, _wrapper: Any = wrapper, **kwargs: Any) -> None:
            mounts = kwargs.get("mounts")
            if mounts:
                wrapped["transports"] += sum(1 for t in mounts.values() if t is not None)
                kwargs["mounts"] = {k: t if t is None else _options(_wrapper, t) for k, t in mounts.items()}
            _init(self, *args, **kwargs)

        cls.__init__ = init  # type: ignore[method-assign]


def _options(wrapper: type, transport: Any) -> Any:
    if NO_DEADLINE_HEADER:
        return wrapper(inner=transport, deadline_header=None)
    return wrapper(inner=transport)


def _wrap_apps() -> None:
    from starlette import testclient

    from resilient.asgi import ResilienceMiddleware

    original = testclient.TestClient.__init__

    def init(self: Any, app: Any, *args: Any, **kwargs: Any) -> None:
        wrapped["apps"] += 1
        options: dict[str, Any] = {"deadline_header": None} if NO_DEADLINE_HEADER else {}
        if not testclient._is_asgi3(app):
            # ASGI 2 (app(scope) -> instance): resilient's middleware, like
            # Starlette's own, speaks ASGI 3; convert it as TestClient would.
            app = testclient._WrapASGI2(app)
        original(self, ResilienceMiddleware(app, **options), *args, **kwargs)

    testclient.TestClient.__init__ = init  # type: ignore[method-assign]


def pytest_configure(config: Any) -> None:
    """Install the wrapping before the suite imports its fixtures."""
    if WRAP == "transport":
        _wrap_transports()
    elif WRAP == "app":
        _wrap_apps()
    elif WRAP:
        raise ValueError(f"RESILIENT_WRAP must be 'transport', 'app' or empty, got {WRAP!r}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say how much was wrapped, so that a run that wrapped nothing is visible (and checked)."""
    if WRAP:
        terminalreporter.write_line(f"resilient wrapped: {wrapped['transports']} transports, {wrapped['apps']} apps")
    report = os.environ.get("RESILIENT_WRAP_REPORT")
    if report:
        with open(report, "w") as f:
            json.dump(wrapped, f)
