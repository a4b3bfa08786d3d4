"""Policy errors that are httpx errors too, so that either ``except`` works.

A service already has ``except httpx.HTTPError:`` around its calls; a
policy's own refusal (open circuit, full bulkhead, local rate limit) or an
expired total timeout would escape it as a 500 if the transport raised the
plain :mod:`resilient.errors` classes. The transport raises these instead:
each is the resilient class *and* the matching httpx class, with every
attribute, note, cause and traceback of the original, and ``request`` set.
"""

from __future__ import annotations

from typing import Any

import httpx

from resilient import errors

__all__ = [
    "BulkheadFullError",
    "CircuitOpenError",
    "RateLimitedError",
    "RejectedError",
    "TimeoutException",
    "as_httpx_error",
]


class TimeoutException(errors.TimeoutError, httpx.TimeoutException):
    """A :class:`resilient.TimeoutError` that is also an :class:`httpx.TimeoutException`.

    Raised by the transports when the pipeline's total or attempt timeout (or
    the caller's deadline) expires; ``timeout``, ``policy`` and ``request``
    are set.
    """


class RejectedError(errors.RejectedError, httpx.TransportError):
    """A :class:`resilient.RejectedError` that is also an :class:`httpx.TransportError`."""


class CircuitOpenError(errors.CircuitOpenError, httpx.TransportError):
    """A :class:`resilient.CircuitOpenError` that is also an :class:`httpx.TransportError`."""


class BulkheadFullError(errors.BulkheadFullError, httpx.TransportError):
    """A :class:`resilient.BulkheadFullError` that is also an :class:`httpx.TransportError`."""


class RateLimitedError(errors.RateLimitedError, httpx.TransportError):
    """A :class:`resilient.RateLimitedError` (a local limit) that is also an :class:`httpx.TransportError`."""


# Most specific first: the first base the error is an instance of wins.
_PUBLIC: tuple[tuple[type[errors.ResilienceError], type[httpx.TransportError]], ...] = (
    (errors.TimeoutError, TimeoutException),
    (errors.CircuitOpenError, CircuitOpenError),
    (errors.BulkheadFullError, BulkheadFullError),
    (errors.RateLimitedError, RateLimitedError),
    (errors.RejectedError, RejectedError),
)
# A subclass of a resilient error (e.g. the pybreaker adapter's) keeps its own
# type too: one combined class per subclass, built once.
_combined: dict[type[BaseException], type[httpx.TransportError]] = dict(_PUBLIC)


def _httpx_class(kind: type[BaseException]) -> type[httpx.TransportError] | None:
    found = _combined.get(kind)
    if found is not None:
        return found
    for base, public in _PUBLIC:
        if issubclass(kind, base):
            found = type(kind.__name__, (kind, public), {"__module__": kind.__module__, "__doc__": kind.__doc__})
            _combined[kind] = found
            return found
    return None


def as_httpx_error(exc: BaseException, request: httpx.Request) -> BaseException:
    """``exc`` as an httpx error, or ``exc`` itself when there is nothing to convert.

    Errors that already are :class:`httpx.HTTPError` (those of the inner
    transport included) and anything that is not a timeout or a rejection of
    a resilient policy come back unchanged. Otherwise the copy is an instance
    of ``type(exc)`` and of the matching class of this module, carries the
    original's attributes, ``args``, notes, ``__cause__``, context and
    traceback, and its ``request`` is ``request``.
    """
    if isinstance(exc, httpx.HTTPError) or not isinstance(exc, errors.ResilienceError):
        return exc
    kind = _httpx_class(type(exc))
    if kind is None:
        return exc
    # Built without calling __init__: the subclasses' signatures differ, and
    # everything the original knows is copied over below.
    converted: Any = kind.__new__(kind, *exc.args)
    httpx.TransportError.__init__(converted, str(exc), request=request)
    converted.args = exc.args
    converted.__dict__.update(exc.__dict__)
    if "__notes__" in exc.__dict__:
        converted.__notes__ = list(exc.__notes__)
    converted.__cause__ = exc.__cause__
    converted.__context__ = exc.__context__
    # The original is the context of the raise: printing it again would show
    # the same error twice; it stays reachable as ``__context__``.
    converted.__suppress_context__ = True
    converted.__traceback__ = exc.__traceback__
    result: BaseException = converted
    return result
