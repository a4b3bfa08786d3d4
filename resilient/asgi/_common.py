"""ASGI types and the small helpers every middleware shares."""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

from resilient.events import EXTRA_HTTP_STATUS, EventSite, ExtraValue, Listener, Severity
from resilient.validate import check_callable, check_switch

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


def exempt_set(paths: Iterable[str], param: str = "exempt_paths") -> frozenset[str]:
    """Validate exempt paths (exact matches on ``scope["path"]``)."""
    if isinstance(paths, str):
        raise TypeError(f"{param} must be an iterable of paths, not a single str: use ({paths!r},)")
    out = frozenset(paths)
    for p in out:
        if not isinstance(p, str) or not p.startswith("/"):
            raise ValueError(f"{param} must contain paths starting with '/', got {p!r}")
    return out


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


def check_predicate(value: Any, param: str) -> ScopePredicate | None:
    """Validate an optional predicate over the scope."""
    return check_callable(value, param, "a callable taking the ASGI scope", allow_none=True)  # type: ignore[no-any-return]


#: ``enforce=``: a bool, or a callable read on every request (shadow mode when false).
Switch = bool | Callable[[], bool]


def check_enforce(value: Any) -> Switch:
    """Validate ``enforce=`` (see :func:`enforcing`)."""
    return check_switch(value, "enforce")


def enforcing(switch: Switch) -> bool:
    """Whether a refusal is answered (``True``) or only reported (shadow mode).

    A callable that raises counts as ``True``: a broken switch must not turn
    a limit off.
    """
    if switch is True:
        return True
    if switch is False:
        return False
    try:
        return bool(switch())
    except Exception:
        return True


class EdgePart:
    """What the two edge limits (:class:`LoadShedding`, :class:`RateLimit`) share.

    The app they wrap, the requests they leave alone (``exempt_paths``,
    ``exempt``), shadow mode (``enforce``) and its count, validated once by
    :meth:`_edge`, which each part calls first in its constructor. The
    per-request tests of the exemptions and of the switch stay inline in
    each part's ``__call__``: they are its success path.
    """

    app: ASGIApp
    #: ``enforce=``: ``False`` (or a callable returning it) for shadow mode.
    enforce: Switch
    #: Requests let through in shadow mode that would have been refused.
    would_reject: int

    def _edge(self, app: Any, exempt_paths: Iterable[str], exempt: Any, enforce: Any) -> None:
        self.app = check_app(app)
        self.enforce = check_enforce(enforce)
        self._exempt_paths = exempt_set(exempt_paths)
        self._exempt = check_predicate(exempt, "exempt")
        self.would_reject = 0


class PartEvents:
    """The events one ASGI part emits: for every response it produces instead of the app, and in shadow mode.

    One delivery path (:class:`resilient.events.EventSite`): nothing is
    built unless somebody listens, and only off the success path.
    """

    __slots__ = ("listeners", "name", "policy_type", "site")

    def __init__(self, policy_type: str, name: str | None, listeners: Iterable[Listener] = ()) -> None:
        self.policy_type = policy_type
        self.name = name
        self.listeners: tuple[Listener, ...] = tuple(listeners)
        self.site = EventSite(operation=name or policy_type)

    def emit(self, event: str, status: int, extras: Mapping[str, ExtraValue], *, duration: float | None = None) -> None:
        """Report that the part answered (or, in shadow mode, would have answered) ``status``."""
        if self.site.enabled(self.listeners):
            self.site.emit(
                self.listeners,
                event,
                Severity.WARNING,
                self.policy_type,
                self.name,
                duration=duration,
                extras={**extras, EXTRA_HTTP_STATUS: status},
            )
