"""What the last cache lookup in this context found: fresh, stale or miss.

:class:`~resilient.cache.StaleCache` records every lookup in a
:mod:`contextvars` variable, so right after ``await get_user(42)`` the caller
can ask :func:`last_lookup` whether the answer was stale (e.g. to add a
``Warning`` or ``Age`` header). The hit path stores a plain tuple; the
:class:`CacheLookup` object is built only when somebody asks.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["FRESH", "MISS", "STALE", "CacheLookup", "last_lookup"]

#: Served from an entry younger than ``ttl``.
FRESH: Final = "fresh"
#: Served from an entry older than ``ttl`` but younger than ``stale_ttl``.
STALE: Final = "stale"
#: The value came from calling the function (this call or a shared one), or the call failed.
MISS: Final = "miss"

LookupState = Literal["fresh", "stale", "miss"]

_last: ContextVar[tuple[LookupState, float] | None] = ContextVar("resilient_cache_last_lookup", default=None)


def _key_prefixes(operation: str | None) -> tuple[tuple[str], str]:
    """The prefixes of a cache key: ``(name,)`` before positional arguments, ``name**`` with keywords."""
    # The site's operation is the guarded function's qualified name even
    # inside a pipeline, where ``fn`` is the next policy's closure. "**"
    # cannot occur in a qualified name, so keys with and without keyword
    # arguments can never be equal.
    name = operation or "?"
    return (name,), name + "**"


@dataclass(frozen=True, slots=True)
class CacheLookup:
    """The outcome of one :class:`~resilient.cache.StaleCache` lookup."""

    #: ``"fresh"``, ``"stale"`` or ``"miss"``.
    state: LookupState
    #: Seconds since the value served was stored (0.0 for a miss).
    age: float

    @property
    def stale(self) -> bool:
        """Whether the value served was past its ``ttl``."""
        return self.state == STALE


def last_lookup() -> CacheLookup | None:
    """The last lookup made by any :class:`~resilient.cache.StaleCache` in this context.

    ``None`` when none has run in the current task (or the context it was
    copied from). A lookup inside a task that the caller did not await
    directly (a hedge, ``asyncio.gather`` of separate tasks) is not visible
    to the caller.
    """
    last = _last.get()
    if last is None:
        return None
    return CacheLookup(last[0], last[1])
