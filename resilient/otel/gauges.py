"""State gauges: what the policies hold now, read when the SDK collects.

::

    import resilient.otel

    resilient.otel.instrument_gauges()                      # every named policy alive
    resilient.otel.instrument_gauges(policies=[breaker, registry])  # or these only

The instruments are observable: the SDK calls them at collection time (once
a minute with the usual periodic reader), and they read the policies'
public state then. Nothing is added to a call, successful or not.

Which policies are reported:

* by default, every *named* policy alive in the process
  (:func:`resilient.policy.live_policies`): the registry holds them
  weakly, so a policy that is dropped is collected and stops being
  reported. Members of a named :class:`~resilient.Pipeline` carry its
  name in ``resilience.pipeline.name`` (unnamed members included). Policies
  held by a :class:`~resilient.Keyed` are reported through it only;
* with ``policies=``, the policies, pipelines and
  :class:`~resilient.Registry` objects given (or a callable returning them,
  called at each collection), named or not. They are held strongly: the
  caller chose them.

A :class:`~resilient.Keyed` reports its ``keys_per_policy`` worst keys (open
breakers first, as :meth:`Keyed.status <resilient.Keyed.status>` ranks them),
each with ``resilience.key`` (the key's ``repr``, cut short), so cardinality
stays bounded whatever the number of keys.

A policy whose state cannot be read (a custom store that raises, say) is
skipped and logged once; a gauge never raises into the SDK's collection.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

from resilient.extras import MissingExtraError

try:
    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
except ModuleNotFoundError as exc:
    raise MissingExtraError("resilient.otel", "otel", exc.name) from exc

from resilient.breaker import CircuitBreaker, CircuitState
from resilient.cache import StaleCache
from resilient.concurrency import AdaptiveConcurrency, Bulkhead
from resilient.keyed import Keyed
from resilient.otel.listener import PIPELINE_NAME, POLICY_NAME, POLICY_TYPE, SCOPE, AttributeValue
from resilient.policy import Pipeline, Policy, live_policies
from resilient.ratelimit import RateLimiter
from resilient.registry import Registry
from resilient.validate import check_int

__all__ = [
    "BULKHEAD_QUEUED",
    "BULKHEAD_RUNNING",
    "CACHE_ENTRIES",
    "CACHE_LOOKUPS",
    "CIRCUIT_FAILURE_RATIO",
    "CIRCUIT_STATE",
    "CIRCUIT_STATE_VALUES",
    "CONCURRENCY_LIMIT",
    "KEY",
    "LOOKUP_RESULT",
    "RATELIMIT_TOKENS",
    "PolicyGauges",
    "effective_state",
    "instrument_gauges",
    "uninstrument_gauges",
]

logger = logging.getLogger("resilient.otel")

#: Gauge: the circuit's effective state, as :data:`CIRCUIT_STATE_VALUES` numbers it.
CIRCUIT_STATE: Final = "resilience.circuit.state"
#: Gauge: failures / calls in the breaker's window (0 with no calls).
CIRCUIT_FAILURE_RATIO: Final = "resilience.circuit.failure_ratio"
#: Gauge: calls holding a bulkhead slot (an adaptive concurrency limit's too).
BULKHEAD_RUNNING: Final = "resilience.bulkhead.running"
#: Gauge: calls waiting for a bulkhead slot.
BULKHEAD_QUEUED: Final = "resilience.bulkhead.queued"
#: Gauge: tokens a rate limiter has available now (fractional).
RATELIMIT_TOKENS: Final = "resilience.ratelimit.tokens"
#: Gauge: an adaptive concurrency limit's current limit.
CONCURRENCY_LIMIT: Final = "resilience.concurrency.limit"
#: Gauge: entries a stale cache holds.
CACHE_ENTRIES: Final = "resilience.cache.entries"
#: Observable counter: cache lookups, by :data:`LOOKUP_RESULT` (``hit``, ``stale``, ``miss``).
CACHE_LOOKUPS: Final = "resilience.cache.lookups"

#: Attribute: the key of a :class:`~resilient.Keyed` policy (its worst keys only).
KEY: Final = "resilience.key"
#: Attribute of :data:`CACHE_LOOKUPS`: ``hit`` (fresh), ``stale`` or ``miss``.
LOOKUP_RESULT: Final = "resilience.cache.result"

#: The numbers :data:`CIRCUIT_STATE` reports (Resilience4j's order).
CIRCUIT_STATE_VALUES: Final[Mapping[CircuitState, int]] = {
    CircuitState.CLOSED: 0,
    CircuitState.OPEN: 1,
    CircuitState.HALF_OPEN: 2,
    CircuitState.ISOLATED: 3,
}

#: What ``policies=`` takes: policies, pipelines and registries, or a callable returning them.
PolicySource = Iterable[Policy | Registry] | Callable[[], Iterable[Policy | Registry]]

Attributes = dict[str, AttributeValue]

# The SDK calls each instrument's callback in turn during one collection. The
# first one reads every policy once (a Keyed ranks its keys to find the worst)
# into a snapshot of observations (values and attributes, no policy), which
# the others take their part of; a part older than this is read afresh.
_SNAPSHOT_FRESH_FOR: Final = 1.0


def effective_state(breaker: CircuitBreaker) -> CircuitState:
    """The state a call would meet now: an open circuit past its break reads half-open.

    :attr:`CircuitBreaker.state` stays ``OPEN`` until a call probes; a gauge
    read between calls must not report a break that is over.
    """
    m = breaker.metrics
    if m.state is CircuitState.OPEN and m.retry_after == 0.0:
        return CircuitState.HALF_OPEN
    return m.state


class PolicyGauges:
    """The state gauges of one meter provider; what :func:`instrument_gauges` returns.

    Args:
        policies: what to report (see the module documentation); ``None``:
            every named policy alive.
        keys_per_policy: keys each :class:`~resilient.Keyed` reports, worst
            first (>= 0).
    """

    def __init__(self, policies: PolicySource | None = None, *, keys_per_policy: int = 10) -> None:
        if isinstance(policies, Policy | Registry):
            policies = [policies]  # a policy is callable, but not a source
        elif policies is not None and not callable(policies):
            policies = list(policies)
            for i, p in enumerate(policies):
                if not isinstance(p, Policy | Registry):
                    raise TypeError(f"policies[{i}] must be a Policy or a Registry, got {p!r}")
        self._source = policies
        #: Keys each :class:`~resilient.Keyed` reports.
        self.keys_per_policy = check_int(keys_per_policy, "keys_per_policy", minimum=0)
        #: Whether the gauges still report (see :meth:`close`).
        self.active = True
        self._lock = threading.Lock()
        self._snapshot: dict[str, tuple[float, list[Observation]]] = {}
        self._failed: weakref.WeakSet[Policy] = weakref.WeakSet()  # logged once each, never kept alive
        self._broken = False  # the last snapshot failed as a whole (logged when it starts failing)

    def close(self) -> None:
        """Stop reporting: the instruments stay (the SDK cannot drop them) but observe nothing."""
        self.active = False
        with self._lock:
            self._snapshot = {}

    # -- what to report ------------------------------------------------------

    def targets(self) -> list[tuple[Policy, Attributes]]:
        """The policies reported now, each with its attributes."""
        out: list[tuple[Policy, Attributes]] = []
        seen: set[int] = set()
        source = self._source
        if source is None:
            live = live_policies()
            owned = self._held_by_keyed(live)
            # Pipelines first, so that their members carry the pipeline's name.
            for policy in sorted(live, key=lambda p: not isinstance(p, Pipeline)):
                if id(policy) not in owned:
                    self._expand(policy, {}, out, seen)
            return out
        items = source() if callable(source) else source
        for item in items:
            if isinstance(item, Registry):
                for name in item.names:
                    with contextlib.suppress(KeyError):  # reconfigured meanwhile
                        self._expand(item.pipeline(name), {PIPELINE_NAME: name}, out, seen)
            elif isinstance(item, Policy):
                self._expand(item, {}, out, seen)
        return out

    def _held_by_keyed(self, live: list[Policy]) -> set[int]:
        """Ids of the policies the live Keyed policies hold: reported through their Keyed only."""
        owned: set[int] = set()
        for policy in live:
            if isinstance(policy, Keyed):
                held = self._read(policy, "keys", lambda k: k.worst(None))
                for _, inner in held or ():
                    owned.update(id(p) for p in _members(inner))
        return owned

    def _expand(self, policy: Policy, base: Attributes, out: list[tuple[Policy, Attributes]], seen: set[int]) -> None:
        if id(policy) in seen:
            return
        seen.add(id(policy))
        if isinstance(policy, Pipeline):
            attrs = base if PIPELINE_NAME in base or policy.name is None else {**base, PIPELINE_NAME: policy.name}
            for member in policy:
                self._expand(member, attrs, out, seen)
            return
        if isinstance(policy, Keyed):
            worst = self._read(policy, "keys", lambda k: k.worst(self.keys_per_policy))
            keyed_attrs = dict(base)
            if policy.name is not None and POLICY_NAME not in keyed_attrs:
                keyed_attrs[POLICY_NAME] = policy.name
            for key, inner in worst or ():
                # The inner policies' own names may be per key: the Keyed's name stands for them.
                for member in _members(inner):
                    if not isinstance(member, Keyed):
                        out.append((member, {**keyed_attrs, POLICY_TYPE: member.policy_type, KEY: key}))
            return
        attrs = {**base, POLICY_TYPE: policy.policy_type}
        if policy.name is not None and POLICY_NAME not in attrs:
            attrs[POLICY_NAME] = policy.name
        out.append((policy, attrs))

    # -- reading -------------------------------------------------------------

    def _read(self, policy: Policy, what: str, read: Callable[[Any], Any]) -> Any:
        """``read(policy)``, or ``None`` (logged once per policy) if it raises."""
        try:
            return read(policy)
        except Exception:
            if policy not in self._failed:
                self._failed.add(policy)
                logger.warning(
                    "resilient: cannot read %s of %s for the OpenTelemetry gauges; skipped",
                    what,
                    policy.label(),
                    exc_info=True,
                )
            return None

    def snapshot(self) -> dict[str, list[Observation]]:
        """Every instrument's observations now, by instrument name."""
        parts: dict[str, list[Observation]] = {name: [] for name in _INSTRUMENT_NAMES}
        for policy, attrs in self.targets():
            for name, kind, what, read, _, _ in _GAUGES:
                if isinstance(policy, kind):
                    value = self._read(policy, what, read)
                    if value is not None:
                        parts[name].append(Observation(value, attrs))
            if isinstance(policy, StaleCache):
                status = self._read(policy, "the lookups", lambda c: c.status())
                if status is not None:
                    for result, field in (("hit", "hits"), ("stale", "stale_hits"), ("miss", "misses")):
                        parts[CACHE_LOOKUPS].append(Observation(status[field], {**attrs, LOOKUP_RESULT: result}))
        return parts

    def observe(self, name: str) -> list[Observation]:
        """The observations of the instrument ``name``: its part of the current snapshot, taken once."""
        if not self.active:
            return []
        try:
            now = time.monotonic()
            with self._lock:
                part = self._snapshot.pop(name, None)
            if part is None or now - part[0] > _SNAPSHOT_FRESH_FOR:
                fresh = self.snapshot()
                self._broken = False
                mine = fresh.pop(name, [])
                with self._lock:
                    self._snapshot = {n: (now, obs) for n, obs in fresh.items()}
                return mine
            return part[1]
        except Exception:  # never into the SDK's collection
            if not self._broken:
                self._broken = True
                logger.warning("resilient: the OpenTelemetry gauges failed; skipped until they work", exc_info=True)
            return []

    def __repr__(self) -> str:
        source = "live named policies" if self._source is None else "given policies"
        return f"PolicyGauges({source}, keys_per_policy={self.keys_per_policy}, active={self.active})"


def _members(policy: Policy) -> Iterator[Policy]:
    """``policy`` and, for a pipeline, its members (nested pipelines included)."""
    if isinstance(policy, Pipeline):
        for member in policy:
            yield from _members(member)
    else:
        yield policy


def _cache_entries(cache: StaleCache) -> int | None:
    entries = cache.status()["entries"]
    return entries if isinstance(entries, int) else None


class _Instruments:
    """The instruments of one meter provider, observing whichever :class:`PolicyGauges` is current."""

    def __init__(self, meter: metrics.Meter) -> None:
        self.current: PolicyGauges | None = None
        for name, _, _, _, unit, description in _GAUGES:
            meter.create_observable_gauge(name, callbacks=[self._callback(name)], unit=unit, description=description)
        meter.create_observable_counter(
            CACHE_LOOKUPS,
            callbacks=[self._callback(CACHE_LOOKUPS)],
            unit="{lookup}",
            description="Cache lookups by result (hit, stale, miss).",
        )

    def _callback(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            current = self.current
            return [] if current is None else current.observe(name)

        return callback


_GAUGES: Final[tuple[tuple[str, type[Policy], str, Callable[[Any], float | int | None], str, str], ...]] = (
    (
        CIRCUIT_STATE,
        CircuitBreaker,
        "the state",
        lambda b: CIRCUIT_STATE_VALUES[effective_state(b)],
        "1",
        "Circuit state: 0 closed, 1 open, 2 half-open (an elapsed break included), 3 isolated.",
    ),
    (
        CIRCUIT_FAILURE_RATIO,
        CircuitBreaker,
        "the failure ratio",
        lambda b: b.metrics.failure_ratio,
        "1",
        "Failures / calls in the circuit breaker's window.",
    ),
    (BULKHEAD_RUNNING, Bulkhead, "running calls", lambda b: b.running, "{call}", "Calls holding a bulkhead slot."),
    (BULKHEAD_QUEUED, Bulkhead, "queued calls", lambda b: b.queued, "{call}", "Calls waiting for a bulkhead slot."),
    (
        RATELIMIT_TOKENS,
        RateLimiter,
        "the tokens",
        lambda r: r.available,
        "{token}",
        "Tokens a rate limiter has available now.",
    ),
    (
        CONCURRENCY_LIMIT,
        AdaptiveConcurrency,
        "the limit",
        lambda a: a.limit,
        "{call}",
        "An adaptive concurrency limit's current limit.",
    ),
    (CACHE_ENTRIES, StaleCache, "the entries", _cache_entries, "{entry}", "Entries a stale cache holds."),
)

_INSTRUMENT_NAMES: Final = (*(g[0] for g in _GAUGES), CACHE_LOOKUPS)

# One set of instruments per meter provider: the SDK keeps only the first
# callback registered under an instrument name, so a second
# instrument_gauges() on a provider swaps what its instruments observe.
_instruments: weakref.WeakKeyDictionary[object, _Instruments] = weakref.WeakKeyDictionary()
_strong: dict[int, tuple[object, _Instruments]] = {}  # providers that cannot be weakly referenced
_instruments_lock = threading.Lock()


class _Global:
    """The key of the global provider's instruments."""


# Created on whatever the global provider is at the first call (the API's
# proxy until an SDK is set, which it then forwards to); later calls with no
# provider reuse them, as the SDK would drop the callbacks of a second set.
_GLOBAL: Final = _Global()


def _instruments_of(meter_provider: MeterProvider | None) -> _Instruments:
    from resilient import __version__

    key: object = _GLOBAL if meter_provider is None else meter_provider
    with _instruments_lock:
        try:
            found = _instruments.get(key)
        except TypeError:
            held = _strong.get(id(key))
            found = held[1] if held is not None else None
        if found is None:
            provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
            found = _Instruments(provider.get_meter(SCOPE, __version__))
            try:
                _instruments[key] = found
            except TypeError:
                _strong[id(key)] = (key, found)
        return found


def instrument_gauges(
    meter_provider: MeterProvider | None = None,
    *,
    policies: PolicySource | None = None,
    keys_per_policy: int = 10,
) -> PolicyGauges:
    """Export the policies' state as observable gauges; returns what they observe.

    Args:
        meter_provider: default: the global one (an SDK set later is
            picked up: the API's proxy instruments forward to it).
        policies: policies, pipelines and :class:`~resilient.Registry`
            objects to report, or a callable returning them at each
            collection; ``None`` (default): every named policy alive, held
            weakly.
        keys_per_policy: how many keys a :class:`~resilient.Keyed` reports,
            worst first.

    Calling it again for the same provider replaces what its gauges
    observe. Nothing is added to any call: the SDK reads the gauges when it
    collects.
    """
    gauges = PolicyGauges(policies, keys_per_policy=keys_per_policy)
    _swap(meter_provider, gauges)
    return gauges


def uninstrument_gauges(meter_provider: MeterProvider | None = None) -> None:
    """Stop the gauges of ``meter_provider`` (default: the global one) from reporting."""
    _swap(meter_provider, None)


def _swap(meter_provider: MeterProvider | None, gauges: PolicyGauges | None) -> None:
    """Make ``gauges`` what the provider's instruments observe; close the previous one."""
    instruments = _instruments_of(meter_provider)
    with _instruments_lock:
        previous, instruments.current = instruments.current, gauges
    if previous is not None:
        previous.close()
