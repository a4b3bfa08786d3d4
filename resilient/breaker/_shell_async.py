"""The circuit breaker's hand-offs and call shells: three shells written as one text.

Every decision is the engine's (:class:`~resilient.CircuitBreaker`'s
``_gate``, ``_admitted``, ``_verdict`` and ``_transitioned``: no I/O, no
waiting); these functions only move permits and outcomes between it and the
store. Only ``_shell_async.py`` (the coroutine wrapper and hand-offs over a
store that does I/O) is written by hand; ``scripts/unasync.py`` generates from
it ``_shell_sync.py`` (the plain-function wrapper and hand-offs) and
``_shell_local.py`` (the coroutine wrapper over a local store, where only the
call is a coroutine), and ``make lint`` fails when one is out of date. Edit
``_shell_async.py``, then run the script.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resilient.breaker.state import BreakerSnapshot, CircuitState
from resilient.breaker.verdict import FAILURE, NEITHER, SHADOW, SUCCESS
from resilient.errors import CircuitOpenError
from resilient.events import EventSite
from resilient.policy import AsyncFn, AsyncWrapped

if TYPE_CHECKING:
    from resilient.breaker.circuit import CircuitBreaker

CLOSED = CircuitState.CLOSED


async def aadmit(breaker: CircuitBreaker, site: EventSite) -> BreakerSnapshot:
    """Admit one call whose snapshot is not closed: the engine's gate, else the store's probe."""
    now = breaker._now()
    permit = breaker._gate(now, site)
    if permit is None:
        permit = breaker._admitted(await breaker._astore.aacquire(now), now, site)
    if isinstance(permit, CircuitOpenError):
        raise permit
    return permit


async def asettle(
    breaker: CircuitBreaker,
    permit: BreakerSnapshot,
    exc: BaseException | None,
    failed: bool,
    start: float | None,
    site: EventSite,
    duration: float | None = None,
) -> None:
    """Hand one outcome to the store: ``start`` is the call's clock reading (``None``: untimed, or ``duration``)."""
    end = None
    if start is not None:
        end = breaker._now()
        duration = end - start
    verdict = breaker._verdict(permit, exc, failed, duration)
    store = breaker._astore
    if verdict == FAILURE:
        snap = await store.arecord_failure(permit, end)
    elif verdict == SUCCESS:
        snap = await store.arecord_success(permit, end)
    else:
        if verdict == NEITHER:
            await store.arelease(permit)
        return
    if snap is not None:
        breaker._transitioned(snap, site, exc)


def build_async(breaker: CircuitBreaker, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
    """The closure guarding each call of the async ``fn`` (see :meth:`~resilient.Policy.build_async`)."""
    store, now, timed, slow, on_result, transitioned = breaker._shell()
    admit, settle = breaker._aadmit, breaker._asettle
    release, record_success = breaker._astore.arelease, breaker._astore.arecord_success

    async def breaker_call(*args: Any, **kwargs: Any) -> Any:
        permit = store.snapshot
        if permit.state is not CLOSED:
            permit = await admit(site)
            if permit is SHADOW:  # shadow mode: would be rejected; runs uncounted
                return await fn(*args, **kwargs)
        start = now() if timed else 0.0
        try:
            result = await fn(*args, **kwargs)
            failed = on_result is not None and on_result(result)
        except Exception as exc:
            await settle(permit, exc, False, start if timed else None, site)
            raise
        except BaseException:
            await release(permit)
            raise
        if failed or (timed and (end := now()) - start >= slow):
            await settle(permit, None, True, None, site)
        else:
            snap = await record_success(permit, end if timed else None)
            if snap is not None:
                transitioned(snap, site, None)
        return result

    return breaker_call
