"""Every ```python block of README.md and docs/**/*.md runs as written.

The rules (also in docs/extending.md, "Snippets in the docs"):

- Each block runs on its own, in a fresh namespace (the blocks of one page
  share one interpreter), with a temporary directory as the current one.
  Top-level ``await`` / ``async with`` / ``async for`` are allowed: such a
  block runs under ``asyncio.run``.
- ``<!-- snippet: fragment -->`` on the line before the fence: the block is
  a fragment (a shape, not a program); it must still parse.
- ``<!-- snippet: continued -->``: the block runs after the page's previous
  block, in the same namespace (so it may use what that one defined).
- ``<!-- snippet: file NAME -->`` before a non-Python block (TOML, JSON):
  its text is written to ``NAME`` in the working directory first, so the
  page's Python can read it.
- Requests to hosts under ``example.com`` are answered by a local server
  (200, ``{"items": [], "count": 3}``); ``REDIS_URL`` points at a private
  redis-server when the page uses it (skipped without the binary), and
  ``REDIS_CLUSTER_URL`` at a private three-master Redis Cluster.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.redis_helpers import LocalCluster, RedisServer, running_cluster, running_redis

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")
MARKER = re.compile(r"^\s*<!--\s*snippet:\s*(?P<kind>fragment|continued|file)\s*(?P<arg>\S*)\s*-->\s*$")
PYTHON = {"python", "py", "python3"}


@dataclass
class Snippet:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: str = ""
    arg: str = ""
    chain: list[Snippet] = field(default_factory=list)  # blocks run before this one, in the same namespace
    files: dict[str, str] = field(default_factory=dict)  # written to the working directory first

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Snippet]:
    """The fenced blocks of one page, with the marker on the line before each."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Snippet] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence = match["indent"], match["fence"]
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        body = "\n".join(
            line[len(indent) :] if line.startswith(indent) else line.lstrip() for line in lines[i + 1 : end]
        )
        previous = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        marker = MARKER.match(previous)
        found.append(
            Snippet(
                page,
                i + 1,
                match["lang"].lower(),
                body + "\n",
                marker["kind"] if marker else "",
                marker["arg"] if marker else "",
            )
        )
        i = end + 1
    return found


def collect() -> list[Snippet]:
    snippets: list[Snippet] = []
    for page in PAGES:
        files: dict[str, str] = {}
        previous: Snippet | None = None
        for block in blocks(page):
            if block.marker == "file":
                files[block.arg] = block.code
                continue
            if block.lang not in PYTHON:
                continue
            block.files = dict(files)
            if block.marker == "continued":
                if previous is None:
                    raise AssertionError(f"{block.id}: 'continued' but no earlier Python block on the page")
                block.chain = [*previous.chain, previous]
            snippets.append(block)
            if block.marker != "fragment":
                previous = block
    return snippets


SNIPPETS = collect()
# One interpreter per page (starting one per block would triple the time):
# each block gets a fresh namespace, or its predecessor's when "continued".
RUNNER = r"""
import ast, asyncio, inspect, json, sys, traceback
blocks = json.loads(sys.stdin.read())
sys.path.insert(0, blocks.pop(0))
import snippet_prelude  # noqa: F401 - local answers for example.com
failures = []
namespaces = {}
for ident, source, previous in blocks:
    namespace = dict(namespaces[previous]) if previous else {"__name__": "__main__"}
    try:
        code = compile(source, ident, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        if code.co_flags & inspect.CO_COROUTINE:
            asyncio.run(eval(code, namespace))
        else:
            exec(code, namespace)
    except BaseException:
        failures.append([ident, traceback.format_exc()])
    namespaces[ident] = namespace
print("SNIPPET-FAILURES " + json.dumps(failures))
"""
PRELUDE = r'''
"""Answers requests to example.com hosts from a local server, for the docs' snippets."""
import http.server
import json
import threading

BODY = json.dumps({"items": [], "count": 3}).encode()


class Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self):
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()

try:
    import httpx
except ImportError:
    httpx = None

if httpx is not None:

    def _local(request):
        host = request.url.host
        if host == "example.com" or host.endswith(".example.com"):
            request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=server.server_port)

    _send = httpx.HTTPTransport.handle_request
    _asend = httpx.AsyncHTTPTransport.handle_async_request

    def handle_request(self, request):
        _local(request)
        return _send(self, request)

    async def handle_async_request(self, request):
        _local(request)
        return await _asend(self, request)

    httpx.HTTPTransport.handle_request = handle_request
    httpx.AsyncHTTPTransport.handle_async_request = handle_async_request
'''


def test_the_pages_have_snippets() -> None:
    assert len(SNIPPETS) > 50
    assert any(s.page.name == "README.md" for s in SNIPPETS)


def test_markers_are_read_from_the_line_before_the_fence(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "<!-- snippet: file conf.toml -->\n```toml\nx = 1\n```\n\n"
        "```python\nimport tomllib\n```\n\n"
        "<!-- snippet: fragment -->\n```python\nreturn 1\n```\n\n"
        "- in a list:\n\n  <!-- snippet: continued -->\n  ```python\n  print(tomllib)\n  ```\n",
        encoding="utf-8",
    )
    found = blocks(page)
    assert [(b.lang, b.marker, b.arg) for b in found] == [
        ("toml", "file", "conf.toml"),
        ("python", "", ""),
        ("python", "fragment", ""),
        ("python", "continued", ""),
    ]
    assert found[3].code == "print(tomllib)\n"  # the list item's indentation is gone


@pytest.mark.parametrize("snippet", [s for s in SNIPPETS if s.marker == "fragment"], ids=lambda s: s.id)
def test_fragment_parses(snippet: Snippet) -> None:
    compile(snippet.code, snippet.id, "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


RUNNABLE: dict[Path, list[Snippet]] = {}
for _snippet in SNIPPETS:
    if _snippet.marker != "fragment":
        RUNNABLE.setdefault(_snippet.page, []).append(_snippet)


@pytest.mark.parametrize("page", list(RUNNABLE), ids=lambda p: str(p.relative_to(ROOT)))
def test_snippets_of_the_page_run(page: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    snippets = RUNNABLE[page]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("REDIS_URL", None)
    env.pop("REDIS_CLUSTER_URL", None)
    if any("REDIS_URL" in s.code for s in snippets):
        server = request.getfixturevalue("snippet_redis")
        env["REDIS_URL"] = f"redis://127.0.0.1:{server.port}/0"
    if any("REDIS_CLUSTER_URL" in s.code for s in snippets):
        env["REDIS_CLUSTER_URL"] = request.getfixturevalue("snippet_cluster").url
    for snippet in snippets:
        for name, text in snippet.files.items():
            (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "snippet_prelude.py").write_text(PRELUDE, encoding="utf-8")
    blocks = [[s.id, s.code, s.chain[-1].id if s.chain else None] for s in snippets]
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps([str(tmp_path), *blocks]),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    marker = "SNIPPET-FAILURES "
    report = [line for line in proc.stdout.splitlines() if line.startswith(marker)]
    if proc.returncode != 0 or not report:
        pytest.fail(f"the snippets of {page.name} did not finish:\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    failures = json.loads(report[-1][len(marker) :])
    codes = {s.id: s.code for s in snippets}
    if failures:
        text = "\n\n".join(f"--- {ident}\n{codes[ident]}\n{tb}" for ident, tb in failures)
        pytest.fail(f"{len(failures)} of {len(snippets)} snippets failed:\n{text}", pytrace=False)


@pytest.fixture
def snippet_redis() -> Iterator[RedisServer]:
    """A private redis-server for a page that reads REDIS_URL (skipped without the binary)."""
    with running_redis() as server:
        yield server


@pytest.fixture
def snippet_cluster() -> Iterator[LocalCluster]:
    """A private Redis Cluster for a page that reads REDIS_CLUSTER_URL (skipped without the binary)."""
    with running_cluster() as cluster:
        yield cluster
