"""A JSON status endpoint: what every named policy is doing right now."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from resilient.asgi._common import ASGIApp, Receive, Scope, Send, json_response, serve_lifespan
from resilient.policy import Policy, live_policies

__all__ = ["policy_snapshot", "status_app"]

PolicySource = Iterable[Policy] | Callable[[], Iterable[Policy]]


def policy_snapshot(policies: Iterable[Policy] | None = None) -> dict[str, Any]:
    """A JSON-able snapshot: ``{"policies": [{"name", "type", "class", "status"}, ...]}``.

    ``policies`` defaults to :func:`resilient.policy.live_policies` (every
    named policy alive in the process). A policy whose ``status()`` raises is
    listed with ``"status": null`` and ``"error"`` (the exception type only).
    """
    items = live_policies() if policies is None else list(policies)
    out: list[dict[str, Any]] = []
    for p in items:
        entry: dict[str, Any] = {"name": p.name, "type": p.policy_type, "class": type(p).__name__}
        try:
            entry["status"] = p.status()
        except Exception as exc:  # a broken status() must not break the endpoint
            entry["status"] = None
            entry["error"] = type(exc).__name__
        out.append(entry)
    return {"policies": out}


def status_app(policies: PolicySource | None = None) -> ASGIApp:
    """An ASGI app serving :func:`policy_snapshot` as JSON on ``GET``.

    Mount it (``Mount("/_resilience", app=status_app())`` in Starlette,
    ``app.mount(...)`` in FastAPI) or use ``status_path=`` of
    :class:`~resilient.asgi.ResilienceMiddleware`.

    Args:
        policies: the policies to show, or a callable returning them; by
            default every named policy alive in the process.

    **Sensitive**: the output reveals your dependencies, their health and your
    limits. It is opt-in; serve it on an internal port or behind auth.
    """
    if policies is None or callable(policies):
        source: Callable[[], Iterable[Policy]] | None = policies
        fixed: tuple[Policy, ...] = ()
    else:
        source = None
        fixed = tuple(policies)
        for p in fixed:
            if not isinstance(p, Policy):
                raise TypeError(f"policies must contain Policy objects, got {p!r}")
    use_live = policies is None

    async def resilience_status(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await serve_lifespan(receive, send)
            return
        if kind != "http":
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        if scope.get("method", "GET") not in ("GET", "HEAD"):
            start, body = json_response(405, {"error": "method_not_allowed"}, [(b"allow", b"GET, HEAD")])
        else:
            chosen = None if use_live else (fixed if source is None else source())
            snapshot = policy_snapshot(chosen)
            start, body = json_response(200, snapshot)
        await send(start)
        await send(body)

    return resilience_status
