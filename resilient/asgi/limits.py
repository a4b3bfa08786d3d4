"""Edge limits with tiers, chains and routes: which limits a request meets.

:class:`Rate` is one limit; a list of them on one key is a chain (every one
must admit the request: 10/s *and* 1000/h). :class:`Tiers` picks a key's
chain with a function (tenant plans, allow-lists). :class:`Route` gives the
requests of a path (and methods) their own limits. :class:`RateLimit`
(``limits=``, ``routes=``) decides with them; this module only says which
limits apply, and builds one keyed limiter per limit and route.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from fractions import Fraction
from typing import Any, TypeAlias

from resilient.asgi._common import Scope
from resilient.clock import Clock
from resilient.ratelimit import AsyncRateStore, KeyedRateLimiter, RateStore
from resilient.validate import check_callable, check_int, check_number

__all__ = ["Rate", "Route", "Tiers"]

logger = logging.getLogger("resilient.asgi")

# The longest window RateLimit-Policy advertises when the rate has to be
# written as a fraction (one day).
_MAX_WINDOW = 86_400

# Chains a Tiers function may lead to per route (distinct lists of rates):
# a function that returns a fresh rate per key must not grow memory.
MAX_CHAINS = 256


class Rate:
    """One limit: ``rate`` requests per ``per`` seconds, in bursts of up to ``burst``.

    Args:
        rate: requests per ``per`` seconds (> 0).
        per: the period, in seconds (> 0).
        burst: the bucket size; by default ``rate`` (at least 1), so a
            ``Rate(1000, per=3600)`` lets 1000 requests through at once and
            then one every 3.6 s.
        name: the policy's identifier in the ``RateLimit-Policy`` and
            ``RateLimit`` headers (default ``"{q}-per-{w}s"`` from the quota).

    Rates are values: equal options make equal rates.
    """

    __slots__ = ("burst", "name", "per", "rate")

    def __init__(self, rate: float, per: float = 1.0, *, burst: int | None = None, name: str | None = None) -> None:
        #: Requests per :attr:`per` seconds.
        self.rate = check_number(rate, "rate")
        #: The period of :attr:`rate`, in seconds.
        self.per = check_number(per, "per", unit="seconds")
        #: The bucket size.
        self.burst = max(1, int(self.rate)) if burst is None else check_int(burst, "burst")
        if name is not None:
            policy_id(name, "name")  # it goes into a header: printable ASCII only
        #: The identifier in the headers, or ``None`` for the default.
        self.name = name

    def _values(self) -> tuple[float, float, int, str | None]:
        return (self.rate, self.per, self.burst, self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rate) and self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        name = f", name={self.name!r}" if self.name is not None else ""
        return f"Rate({self.rate:g}, per={self.per:g}, burst={self.burst}{name})"


#: What ``limits=`` takes: a rate, a chain of rates, or :class:`Tiers`.
Limits: TypeAlias = "Rate | Sequence[Rate] | Tiers"


def _chain(value: Any, param: str) -> tuple[Rate, ...]:
    """A rate or a non-empty sequence of rates, as a tuple; anything else is a ``TypeError``/``ValueError``."""
    if isinstance(value, Rate):
        return (value,)
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(f"{param} must be a Rate, a sequence of Rate, or Tiers, got {value!r}")
    chain = tuple(value)
    if not chain:
        raise ValueError(f"{param} must hold at least one Rate, got an empty sequence")
    for i, rate in enumerate(chain):
        if not isinstance(rate, Rate):
            raise TypeError(f"{param}[{i}] must be a Rate, got {rate!r}")
    if len(set(chain)) != len(chain):
        raise ValueError(f"{param} lists the same Rate twice: {chain!r}")
    return chain


class Tiers:
    """A key's limits chosen by a function: tenant plans, allow-lists.

    ``Tiers(lambda tenant: PLANS.get(plan_of(tenant)), default=[Rate(10)])``:
    ``of(key)`` returns a :class:`Rate`, a sequence of rates (a chain), or
    ``None`` for "not limited" (an allow-listed key). ``default`` applies when
    ``of`` raises or returns anything else (logged once): a failing plan
    lookup never lets a key through unlimited, and never fails the request.

    ``of`` runs for every request; keep it cheap (a dict lookup). Each
    distinct chain it returns gets its own buckets, built once; after
    256 distinct chains per route, further new ones get ``default`` (logged
    once), so a function that makes a new rate per key cannot grow memory.
    """

    __slots__ = ("default", "of")

    def __init__(
        self, of: Callable[[Hashable], Rate | Sequence[Rate] | None], *, default: Rate | Sequence[Rate]
    ) -> None:
        #: ``of(key) -> Rate | Sequence[Rate] | None``.
        self.of = check_callable(of, "of", "a callable key -> Rate | sequence of Rate | None")
        #: The chain for keys ``of`` cannot place.
        self.default: tuple[Rate, ...] = _chain(default, "default")

    def __repr__(self) -> str:
        return f"Tiers({self.of!r}, default={list(self.default)!r})"


class Route:
    """The requests of one route, with limits of their own.

    Args:
        path: the path the route matches: exactly, or (``prefix=True``) any
            path under it (``"/search"`` matches ``/search`` and
            ``/search/x``, not ``/searches``).
        limits: a :class:`Rate`, a chain of rates, or :class:`Tiers`.
        methods: the HTTP methods it matches (``{"POST"}``), or ``None``
            for all.
        prefix: match the paths under ``path`` too.

    The first route of ``RateLimit(routes=[...])`` that matches a request
    decides its limits; its buckets are its own (a client's ``/search``
    quota is apart from its quota elsewhere).
    """

    __slots__ = ("limits", "methods", "path", "prefix")

    def __init__(self, path: str, limits: Limits, *, methods: Iterable[str] | None = None, prefix: bool = True) -> None:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"path must be a str starting with '/', got {path!r}")
        #: The path matched.
        self.path = path.rstrip("/") or "/"
        #: The route's limits.
        self.limits: tuple[Rate, ...] | Tiers = limits if isinstance(limits, Tiers) else _chain(limits, "limits")
        if methods is not None:
            if isinstance(methods, str) or not all(isinstance(m, str) and m for m in methods):
                raise TypeError(f"methods must be an iterable of method names (str) or None, got {methods!r}")
            methods = frozenset(m.upper() for m in methods)
            if not methods:
                raise ValueError("methods must name at least one method, or be None for all")
        #: The methods matched, or ``None`` for all.
        self.methods: frozenset[str] | None = methods
        if not isinstance(prefix, bool):
            raise TypeError(f"prefix must be a bool, got {prefix!r}")
        self.prefix = prefix

    def matches(self, scope: Scope) -> bool:
        """Whether the request ``scope`` is on this route."""
        if self.methods is not None and scope.get("method") not in self.methods:
            return False
        path: str = scope["path"]
        if path == self.path:
            return True
        return self.prefix and path.startswith(self.path if self.path.endswith("/") else self.path + "/")

    def __repr__(self) -> str:
        methods = f", methods={sorted(self.methods)!r}" if self.methods is not None else ""
        return f"Route({self.path!r}, {self.limits!r}{methods})"


def quota_window(burst: int, rate: float, per: float) -> tuple[int, int]:
    """``RateLimit-Policy``'s ``q`` and ``w``: whole numbers whose ratio is the enforced rate.

    The bucket (``burst``) and the seconds it takes to refill when those are
    whole; otherwise the rate itself as a fraction of whole numbers, rounded
    up (never down: a client pacing itself by ``q/w`` must be able to use its
    whole quota, and ``burst=30`` at 20/s as ``q=30;w=2`` would hold it to 15/s).
    """
    window = burst * per / rate
    if window >= 1.0 and abs(window - round(window)) < 1e-9:
        return burst, round(window)
    per_second = rate / per
    w = Fraction(per_second).limit_denominator(_MAX_WINDOW).denominator
    return max(1, math.ceil(per_second * w - 1e-9)), w


def policy_id(name: str, param: str) -> str:
    """``name`` as a Structured Fields sf-string (printable ASCII, with ``"`` and ``\\`` escaped)."""
    if not isinstance(name, str) or not name or any(not (0x20 <= ord(c) < 0x7F) for c in name):
        raise ValueError(f"{param} must be non-empty printable ASCII, got {name!r}")
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Bucket:
    """One limit of one route, with its keyed limiter and its header identity."""

    __slots__ = ("atry_acquire", "limiter", "policy", "policy_id", "rate", "remote", "try_acquire")

    def __init__(self, rate: Rate, limiter: KeyedRateLimiter, remote: bool) -> None:
        self.rate = rate
        self.limiter = limiter
        q, w = quota_window(rate.burst, rate.rate, rate.per)
        #: The sf-string identifier.
        self.policy_id = policy_id(rate.name if rate.name is not None else f"{q}-per-{w}s", "Rate.name")
        #: This limit's ``RateLimit-Policy`` item.
        self.policy = f"{self.policy_id};q={q};w={w}"
        self.remote = remote
        self.try_acquire = limiter.try_acquire
        self.atry_acquire = limiter.atry_acquire


class Chains:
    """Which buckets each request meets: the routes' and the default limits, built once each.

    ``chain(scope, key)`` is the tuple of :class:`Bucket` every one of which
    must admit the request, or ``None`` when nothing limits it.
    """

    def __init__(
        self,
        limits: Limits | None,
        routes: Sequence[Route],
        *,
        name: str | None,
        max_keys: int,
        clock: Clock | None,
        store: Callable[[], RateStore] | None,
    ) -> None:
        if isinstance(routes, Route) or not all(isinstance(r, Route) for r in routes):
            raise TypeError(f"routes must be a sequence of Route, got {routes!r}")
        self.routes = tuple(routes)
        self.default: tuple[Rate, ...] | Tiers | None = (
            None if limits is None else limits if isinstance(limits, Tiers) else _chain(limits, "limits")
        )
        self._name = name or "asgi.rate_limit"
        self._max_keys = max_keys
        self._clock = clock
        self._store = check_callable(store, "store", "a callable () -> RateStore", allow_none=True)
        self.remote = False
        # (route index or -1, chain of rates) -> buckets; static chains are built now.
        self._built: dict[tuple[int, tuple[Rate, ...]], tuple[Bucket, ...]] = {}
        self._tiered: dict[int, int] = {}
        self._warned: set[tuple[int, str]] = set()
        self._static: list[tuple[Bucket, ...] | Tiers | None] = []
        for index, spec in [*enumerate(r.limits for r in self.routes), (-1, self.default)]:
            if isinstance(spec, Tiers):
                self._buckets(index, spec.default)
                self._static.append(spec)
            else:
                self._static.append(None if spec is None else self._buckets(index, spec))

    def _buckets(self, index: int, rates: tuple[Rate, ...]) -> tuple[Bucket, ...]:
        built = self._built.get((index, rates))
        if built is None:
            made = []
            for rate in rates:
                q, w = quota_window(rate.burst, rate.rate, rate.per)
                where = "" if index < 0 else f"route{index}:"
                store = self._store() if self._store is not None else None
                limiter = KeyedRateLimiter(
                    rate.rate,
                    rate.per,
                    burst=rate.burst,
                    mode="reject",
                    max_keys=self._max_keys,
                    name=f"{self._name}:{where}{rate.name or f'{q}-per-{w}s'}",
                    clock=self._clock,
                    store=store,
                )
                remote = isinstance(store, AsyncRateStore)
                self.remote = self.remote or remote
                made.append(Bucket(rate, limiter, remote))
            built = self._built[(index, rates)] = tuple(made)
        return built

    def _warn(self, index: int, kind: str, detail: str) -> None:
        # Once per route and kind of failure (raising, a bad value, too many chains).
        if (index, kind) not in self._warned:
            self._warned.add((index, kind))
            where = "the default limits" if index < 0 else repr(self.routes[index])
            logger.warning(
                "resilient: the Tiers function of %s %s; such keys get its default (logged once)", where, detail
            )

    def chain(self, scope: Scope, key: Hashable) -> tuple[Bucket, ...] | None:
        """The buckets that must all admit this request (``None``: it is not limited)."""
        index = -1
        for i, route in enumerate(self.routes):
            if route.matches(scope):
                index = i
                break
        spec = self._static[index]
        if not isinstance(spec, Tiers):
            return spec
        try:
            got = spec.of(key)
        except Exception as exc:
            self._warn(index, "raised", f"raised {type(exc).__name__}: {exc}")
            return self._buckets(index, spec.default)
        if got is None:
            return None
        if isinstance(got, Rate):
            rates: tuple[Rate, ...] = (got,)
        else:
            try:
                rates = _chain(got, "Tiers(...)(key)")
            except (TypeError, ValueError) as exc:
                self._warn(index, "bad", f"returned a bad value ({exc})")
                return self._buckets(index, spec.default)
        built = self._built.get((index, rates))
        if built is not None:
            return built
        count = self._tiered.get(index, 0)
        if count >= MAX_CHAINS:
            self._warn(index, "many", f"led to more than {MAX_CHAINS} distinct chains")
            return self._buckets(index, spec.default)
        self._tiered[index] = count + 1
        return self._buckets(index, rates)

    def limiters(self) -> list[KeyedRateLimiter]:
        """Every keyed limiter built so far (for status)."""
        return [bucket.limiter for chain in self._built.values() for bucket in chain]
