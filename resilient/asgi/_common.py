"""ASGI types and the small helpers every middleware shares."""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

__all__ = [
    "ASGIApp",
    "DEFAULT_EXEMPT_PATHS",
    "Message",
    "Receive",
    "Scope",
    "ScopePredicate",
    "Send",
]

#: An ASGI connection scope.
Scope = MutableMapping[str, Any]
#: An ASGI event, received or sent.
Message = MutableMapping[str, Any]
#: The ASGI ``receive`` callable.
Receive = Callable[[], Awaitable[Message]]
#: The ASGI ``send`` callable.
Send = Callable[[Message], Awaitable[None]]
#: An ASGI 3 application.
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: A predicate over the scope, e.g. to exempt some requests.
ScopePredicate = Callable[[Scope], bool]

#: Health-check paths that are never shed or rate limited by default: an
#: orchestrator that cannot reach them kills the replica exactly when it is
#: busiest, which turns overload into an outage.
DEFAULT_EXEMPT_PATHS: tuple[str, ...] = ("/healthz", "/livez", "/readyz")


async def serve_lifespan(receive: Receive, send: Send) -> None:
    """Answer a lifespan scope for an app that has nothing to start or stop.

    For the few apps here that run on their own (the status app; test and
    benchmark servers): the server then starts without a lifespan warning.
    """
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def json_response(
    status: int, payload: dict[str, Any], headers: Iterable[tuple[bytes, bytes]] = ()
) -> tuple[Message, Message]:
    """The two ASGI messages of a small JSON response, with its length and type."""
    body = json.dumps(payload, separators=(",", ":"), default=str).encode()
    start_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"cache-control", b"no-store"),
        *headers,
    ]
    return (
        {"type": "http.response.start", "status": status, "headers": start_headers},
        {"type": "http.response.body", "body": body, "more_body": False},
    )


async def send_messages(send: Send, messages: tuple[Message, Message]) -> None:
    """Send a prepared response (from :func:`json_response`) as fresh dicts.

    A server or an outer middleware may mutate what it is sent, so the
    prepared messages are never sent themselves.
    """
    start, body = messages
    await send({**start, "headers": list(start["headers"])})
    await send(dict(body))


#: The answer to a request whose caller's deadline has passed before its
#: handler could start (already expired on arrival, or while queued).
DEADLINE_EXCEEDED = json_response(504, {"error": "deadline_exceeded"})

# A timer may run up to a clock tick early; a deadline this close to its end
# when a wait for it ends counts as expired.
DEADLINE_SLACK = 1e-3


async def send_json(
    send: Send, status: int, payload: dict[str, Any], headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """Send a small JSON response produced by a middleware (never by the app)."""
    start, body = json_response(status, payload, headers)
    await send(start)
    await send(body)


def retry_after_seconds(seconds: float, *, minimum: int = 0) -> int:
    """Whole seconds for a ``Retry-After`` header: rounded up, never negative."""
    if math.isnan(seconds) or seconds <= 0:
        return minimum
    if math.isinf(seconds):
        return max(minimum, 86_400)
    return max(minimum, math.ceil(seconds))


def check_number(value: Any, param: str, *, minimum: float = 0.0, strict: bool = True) -> float:
    """Validate a finite number option; ``strict`` means ``> minimum`` rather than ``>=``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{param} must be a number, got {value!r}")
    op = ">" if strict else ">="
    if math.isnan(value) or math.isinf(value) or (value <= minimum if strict else value < minimum):
        raise ValueError(f"{param} must be a finite number {op} {minimum:g}, got {value!r}")
    return float(value)


def check_optional_number(value: Any, param: str) -> float | None:
    """Validate an optional finite number option ``> 0``."""
    return None if value is None else check_number(value, param)


def check_int(value: Any, param: str, *, minimum: int) -> int:
    """Validate an integer option ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{param} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{param} must be >= {minimum}, got {value!r}")
    return value


def exempt_set(paths: Iterable[str], param: str = "exempt_paths") -> frozenset[str]:
    """Validate exempt paths (exact matches on ``scope["path"]``)."""
    if isinstance(paths, str):
        raise TypeError(f"{param} must be an iterable of paths, not a single str: use ({paths!r},)")
    out = frozenset(paths)
    for p in out:
        if not isinstance(p, str) or not p.startswith("/"):
            raise ValueError(f"{param} must contain paths starting with '/', got {p!r}")
    return out


def check_predicate(value: Any, param: str) -> ScopePredicate | None:
    """Validate an optional predicate over the scope."""
    if value is not None and not callable(value):
        raise TypeError(f"{param} must be a callable taking the ASGI scope, got {value!r}")
    return value  # type: ignore[no-any-return]


def check_app(app: Any) -> ASGIApp:
    """Validate the wrapped ASGI application."""
    if not callable(app):
        raise TypeError(f"app must be an ASGI application (a callable), got {app!r}")
    return app  # type: ignore[no-any-return]


def header_value(scope: Scope, name: bytes) -> bytes | None:
    """The first value of the request header ``name`` (lower-case bytes), or ``None``."""
    for key, value in scope.get("headers") or ():
        if key == name:
            return value  # type: ignore[no-any-return]
    return None
