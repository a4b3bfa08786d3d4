"""The retry's hand-offs to user code outside the engine: the give-up hook, and the one-attempt passthrough.

Both shells use them; the sync ones are hand-written, as a synchronous
retry cannot await an ``async def`` hook.
"""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any

from resilient.policy import AsyncFn, AsyncWrapped, SyncFn

if TYPE_CHECKING:
    from resilient.retry.engine import GiveUp
    from resilient.retry.policy import Retry

logger = logging.getLogger("resilient.retry")


def passthrough_sync(fn: SyncFn) -> SyncFn:
    """A synchronous function needs no closure: it is returned as it is."""
    return fn


def passthrough_async(fn: AsyncFn) -> AsyncWrapped:
    """``fn`` in a closure of the retry's own: one attempt, nothing to retry."""

    async def retry_call(*args: Any, **kwargs: Any) -> Any:
        return await fn(*args, **kwargs)

    return retry_call


async def notify_async(policy: Retry, record: GiveUp) -> None:
    """Call the give-up hook (awaited when it is async); what it raises is logged, never raised."""
    hook = policy.on_give_up
    if hook is None:  # taken away since the retry began
        return
    try:
        value = hook(record)
        if inspect.isawaitable(value):
            await value
    except Exception:
        hook_failed(policy)


def notify_sync(policy: Retry, record: GiveUp) -> None:
    """Call the give-up hook of a synchronous retry (see ``notify_async``)."""
    hook = policy.on_give_up
    if hook is None:
        return
    try:
        value = hook(record)
    except Exception:
        hook_failed(policy)
        return
    if inspect.iscoroutine(value):
        # A plain function that returned a coroutine: nothing here can await it.
        value.close()
        logger.warning(
            "resilient: %s: on_give_up returned a coroutine in a synchronous retry; not awaited", policy.label()
        )


def hook_failed(policy: Retry) -> None:
    """Log the give-up hook's exception: it never replaces the retry's outcome."""
    logger.error(
        "resilient: %s: on_give_up raised; the retry's outcome is returned or re-raised as it is",
        policy.label(),
        exc_info=True,
    )
