"""Retry: call again when a call fails, after a backoff delay.

The success path is one ``await`` inside a ``try``: the backoff iterator,
the clock and the event objects are created only after a failure.

Outcomes:

* an exception matched by ``on`` is retried; when the attempts run out the
  last exception is re-raised as itself, with a note saying how many
  attempts were made;
* a result flagged by ``on_result`` is retried; when the attempts run out
  the last result is *returned* (an HTTP 503 response stays a response);
* anything else (other exceptions, cancellation, ``KeyboardInterrupt``) goes
  straight through, never retried.

``on_give_up`` is told (with a :class:`GiveUp` record) when the retry gives
up on a retryable failure, e.g. to hand the work to a dead-letter queue.

:class:`Retry` holds the options and builds the sync and async wrappers,
thin shells over the :class:`~resilient.retry.engine.RetryEngine`, which
makes every decision of a retried call.
"""

from __future__ import annotations

from resilient.retry.engine import GiveUp, GiveUpReason, RetryBudgetLike, current_attempt
from resilient.retry.engine import _retrying as _retrying  # resilient's tests read it
from resilient.retry.policy import GiveUpHook, Retry

__all__ = ["GiveUp", "GiveUpHook", "GiveUpReason", "Retry", "RetryBudgetLike", "current_attempt"]
