"""The shells of :class:`~resilient.Retry`: the call, the sleep and the hand-off to the engine.

Every decision lives in :class:`~resilient.retry.engine.RetryEngine`.
``_shell_async.py`` is written by hand; ``_shell_sync.py`` is generated from
it by ``scripts/unasync.py`` (``make lint`` fails when it is out of date):
edit the first, then run the script.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resilient.events import EventSite, duration_listeners
from resilient.policy import AsyncFn, AsyncWrapped, Outcome
from resilient.retry._hook import notify_async, passthrough_async
from resilient.retry.engine import RetryEngine, _retrying

if TYPE_CHECKING:
    from resilient.retry.policy import Retry

__all__ = ["build_async"]


def build_async(policy: Retry, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
    """The async wrapper of ``fn`` (see :meth:`~resilient.Policy.build_async`)."""
    on, on_result, durations, retrying = policy._on, policy._on_result, duration_listeners, _retrying
    pre, timed = policy._prelude()
    if policy.attempts == 1 and policy.budget is None and policy.on_give_up is None:
        return passthrough_async(fn)

    async def again(
        args: tuple[Any, ...], kwargs: dict[str, Any], start: float | None, first: Outcome[Any] | None
    ) -> Any:
        run = RetryEngine(policy, site, args, kwargs, start if timed else None, first)
        try:
            while (delay := run.next_delay()) is not None:
                if delay > 0:
                    await policy.clock.asleep(delay)
                t0 = run.begin_attempt()
                try:
                    result = await fn(*run.args, **run.kwargs)
                except BaseException as exc:
                    if not run.failed_with(exc, t0):
                        raise
                    continue
                if not run.failed_with_result(result, t0):
                    return result
            if (record := run.give_up()) is not None:
                await notify_async(policy, record)
            return run.finish()
        finally:
            run.close()

    async def retry_call(*args: Any, **kwargs: Any) -> Any:
        start = pre and pre()
        if durations or retrying[0]:
            return await again(args, kwargs, start, None)
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            if not on(exc):
                raise
            outcome: Outcome[Any] = Outcome(exception=exc)
        else:
            if on_result is None or not on_result(result):
                return result
            outcome = Outcome(result=result)
        # Outside the except block, so that a re-raised exception does not
        # carry itself as its own context.
        return await again(args, kwargs, start, outcome)

    return retry_call
