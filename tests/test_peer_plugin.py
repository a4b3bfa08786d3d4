"""benchmarks/resilient_peer_plugin.py: what benchmarks/peer_suites.py runs httpx's and Starlette's suites with.

The suites themselves are downloaded and run by hand (docs/benchmarks.md);
here the plugin runs over small suites of the same shape, so that a change
in httpx or Starlette that silently stops the wrapping fails in CI.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def _environment(monkeypatch: pytest.MonkeyPatch, wrap: str) -> None:
    # The plugin on the path; no proxy from the machine (each would add a transport to the counts).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(PLUGIN_DIR), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("RESILIENT_WRAP", wrap)
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


HTTPX_SUITE = """
import asyncio

import httpx

from resilient.httpx import AsyncResilientTransport, ResilientTransport


def answer(status):
    return httpx.MockTransport(lambda request: httpx.Response(status))


def test_every_sync_transport_is_wrapped():
    client = httpx.Client(transport=answer(200), mounts={"http://mounted.test": answer(201)})
    assert isinstance(client._transport, ResilientTransport)
    assert client.get("http://a.test/").status_code == 200
    assert client.get("http://mounted.test/").status_code == 201
    assert isinstance(httpx.Client()._transport, ResilientTransport)


def test_every_async_transport_is_wrapped():
    async def main():
        async with httpx.AsyncClient(transport=answer(204)) as client:
            assert isinstance(client._transport, AsyncResilientTransport)
            return (await client.get("http://a.test/")).status_code

    assert asyncio.run(main()) == 204
"""

STARLETTE_SUITE = """
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from resilient.asgi import ResilienceMiddleware

started = []


async def hello(request):
    return PlainTextResponse("hello")


def app():
    async def lifespan(app):
        started.append(True)
        yield

    return Starlette(routes=[Route("/", hello)], lifespan=lifespan)


def test_the_app_and_its_lifespan_go_through_the_middleware():
    with TestClient(app()) as client:
        assert isinstance(client.app, ResilienceMiddleware)
        assert client.get("/").text == "hello"
    assert started == [True]


def test_an_asgi2_app_is_converted_then_wrapped():
    def asgi2(scope):
        async def instance(receive, send):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"two"})

        return instance

    client = TestClient(asgi2)
    assert isinstance(client.app, ResilienceMiddleware)
    assert client.get("/").text == "two"
"""


@pytest.mark.parametrize(
    ("wrap", "suite", "counts"),
    [
        ("transport", HTTPX_SUITE, {"transports": 4, "apps": 0}),
        ("app", STARLETTE_SUITE, {"transports": 0, "apps": 2}),
    ],
)
def test_the_plugin_wraps_what_the_suites_build(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, wrap: str, suite: str, counts: dict[str, int]
) -> None:
    report = pytester.path / "wrapped.json"
    _environment(monkeypatch, wrap)
    monkeypatch.setenv("RESILIENT_WRAP_REPORT", str(report))
    pytester.makepyfile(test_suite=suite)
    result = pytester.runpytest_subprocess("-p", "resilient_peer_plugin", "-W", "ignore::DeprecationWarning")
    result.assert_outcomes(passed=2)
    assert json.loads(report.read_text()) == counts


def test_a_bad_wrap_setting_stops_the_run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    _environment(monkeypatch, "everything")
    pytester.makepyfile(test_suite="def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "resilient_peer_plugin")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*RESILIENT_WRAP must be 'transport', 'app' or empty*"])
