"""Named pipelines built from plain configuration, reloadable at run time.

Operators tune resilience without a deploy: the numbers live in TOML, JSON
or the environment, and code asks the registry for a pipeline by name::

    registry = Registry.from_toml("resilience.toml")

    @registry.policy("payments")
    async def charge(order): ...

    registry.configure(new_config)   # later: charge() now runs the new pipeline

The configuration is a mapping of pipeline names to lists of policy specs;
each spec is a mapping with a ``type`` and the policy's keyword arguments
(a ``keyed`` spec holds the ``policies`` to build per key, and its ``key``
is ``{arg = N}``, ``{kwarg = "name"}`` or ``"package.module:function"``)::

    [pipelines]
    payments = [
      { type = "timeout", seconds = 10 },
      { type = "retry", attempts = 3, backoff = { type = "exponential", base = 0.2 }, on = ["ConnectionError"] },
      { type = "circuit_breaker", name = "payments", failure_ratio = 0.5, minimum_throughput = 20 },
      { type = "timeout", seconds = 2 },
    ]

``on`` (and ``ignore``) take exception names: builtins by name, others by
dotted path (``"httpx.TransportError"``). Backoffs are specs too
(``constant``, ``linear``, ``exponential``).

On :meth:`Registry.configure`, a policy whose spec did not change keeps its
object, and so its state (a breaker stays open, a limiter keeps its
tokens); changed specs build new objects. Functions wrapped with
:meth:`Registry.policy` pick up the new pipeline on their next call.
"""

from __future__ import annotations

import importlib
import json
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from resilient.events import EventSite
from resilient.policy import AsyncFn, AsyncWrapped, Pipeline, Policy, SyncFn

__all__ = ["Registry"]

# type name -> "module:attribute"; imported lazily so that optional modules
# cost nothing unless a configuration names them.
_POLICY_TYPES: dict[str, str] = {
    "retry": "resilient.retry:Retry",
    "timeout": "resilient.timeout:Timeout",
    "fallback": "resilient.fallback:Fallback",
    "hedge": "resilient.hedge:Hedge",
    "circuit_breaker": "resilient.breaker:CircuitBreaker",
    "bulkhead": "resilient.concurrency:Bulkhead",
    "rate_limiter": "resilient.ratelimit:RateLimiter",
    "keyed_rate_limiter": "resilient.ratelimit:KeyedRateLimiter",
    "adaptive_throttle": "resilient.throttle:AdaptiveThrottle",
    "stale_cache": "resilient.cache:StaleCache",
    "keyed": "resilient.keyed:Keyed",
    "fault": "resilient.chaos:Fault",
    "latency": "resilient.chaos:Latency",
    "result_injection": "resilient.chaos:ResultInjection",
}
_BACKOFF_TYPES = {"constant", "linear", "exponential"}
_EXCEPTION_OPTIONS = ("on", "ignore")


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _exception_type(name: str, where: str) -> type[BaseException]:
    if not isinstance(name, str):
        raise TypeError(f"{where}: exception names must be strings, got {name!r}")
    module, _, attr = name.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module or "builtins"), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{where}: unknown exception {name!r}") from exc
    if not (isinstance(obj, type) and issubclass(obj, BaseException)):
        raise ValueError(f"{where}: {name!r} is not an exception type")
    return obj


def _freeze(value: Any) -> Any:
    """A hashable, order-insensitive image of a spec, to tell changed specs apart."""
    if isinstance(value, Mapping):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


class Registry:
    """Named pipelines from configuration; see the module documentation.

    Args:
        config: ``{"pipelines": {name: [spec, ...]}}`` or directly
            ``{name: [spec, ...]}``.
        policy_types: extra ``{type_name: factory}`` entries, for your own
            policies (a factory takes the spec's keyword arguments).
    """

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        policy_types: Mapping[str, Callable[..., Policy]] | None = None,
    ) -> None:
        self._types: dict[str, Callable[..., Policy] | str] = dict(_POLICY_TYPES)
        if policy_types:
            for key, factory in policy_types.items():
                if not callable(factory):
                    raise TypeError(f"policy_types[{key!r}] must be callable, got {factory!r}")
                self._types[key] = factory
        self._lock = threading.Lock()
        self._pipelines: dict[str, Pipeline] = {}
        self._built: dict[tuple[str, int], tuple[Any, Policy]] = {}
        #: Bumped by every successful :meth:`configure`.
        self.generation = 0
        if config is not None:
            self.configure(config)

    # -- loading -------------------------------------------------------------

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], **kwargs: Any) -> Registry:
        """Build a registry from a TOML file."""
        import tomllib

        with Path(path).open("rb") as f:
            return cls(tomllib.load(f), **kwargs)

    @classmethod
    def from_json(cls, text: str, **kwargs: Any) -> Registry:
        """Build a registry from a JSON document."""
        return cls(json.loads(text), **kwargs)

    def configure(self, config: Mapping[str, Any], *, env_prefix: str | None = None) -> None:
        """Validate ``config`` and swap it in; atomic: a bad config changes nothing.

        With ``env_prefix`` (e.g. ``"RESILIENT__"``), environment variables
        ``<PREFIX><PIPELINE>__<POSITION or TYPE>__<OPTION>=<JSON or text>``
        override single options: ``RESILIENT__PAYMENTS__RETRY__ATTEMPTS=5``.

        Raises:
            ValueError, TypeError: the configuration is invalid; the message
                names the pipeline, the position and the option.
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping, got {type(config).__name__}")
        pipelines = config.get("pipelines", config)
        if not isinstance(pipelines, Mapping):
            raise TypeError("config['pipelines'] must be a mapping of names to lists of policy specs")
        specs = {name: [dict(s) if isinstance(s, Mapping) else s for s in p] for name, p in pipelines.items()}
        if env_prefix:
            _apply_env(specs, env_prefix, os.environ)
        with self._lock:
            built: dict[tuple[str, int], tuple[Any, Policy]] = {}
            new: dict[str, Pipeline] = {}
            for name, policy_specs in specs.items():
                if not isinstance(name, str) or not isinstance(policy_specs, list):
                    raise TypeError(f"pipeline {name!r} must be a list of policy specs")
                policies = []
                for i, spec in enumerate(policy_specs):
                    frozen = _freeze(spec)
                    old = self._built.get((name, i))
                    policy = old[1] if old is not None and old[0] == frozen else self._build(name, i, spec)
                    built[(name, i)] = (frozen, policy)
                    policies.append(policy)
                new[name] = Pipeline(*policies, name=name)
            self._built = built
            self._pipelines = new
            self.generation += 1

    def _build(self, pipeline: str, position: int, spec: Any) -> Policy:
        return self._build_spec(f"pipeline {pipeline!r}, policy #{position}", spec)

    def _build_spec(self, where: str, spec: Any) -> Policy:
        if not isinstance(spec, Mapping):
            raise TypeError(f"{where}: a policy spec must be a mapping with a 'type', got {spec!r}")
        options = dict(spec)
        kind = options.pop("type", None)
        factory = self._types.get(kind) if isinstance(kind, str) else None
        if factory is None:
            raise ValueError(f"{where}: unknown policy type {kind!r}; known: {sorted(self._types)}")
        where = f"{where} ({kind})"
        if kind == "keyed" and factory == _POLICY_TYPES["keyed"]:
            options = self._keyed_options(options, where)
        for key in _EXCEPTION_OPTIONS:
            if key in options:
                names = options[key]
                names = [names] if isinstance(names, str) else names
                options[key] = tuple(_exception_type(n, f"{where}, option {key!r}") for n in names)
        if isinstance(options.get("backoff"), Mapping):
            options["backoff"] = _backoff(options["backoff"], where)
        if isinstance(factory, str):
            factory = _load(factory)
        try:
            return factory(**options)
        except TypeError as exc:
            raise TypeError(f"{where}: {exc}") from exc
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc

    def _keyed_options(self, options: dict[str, Any], where: str) -> dict[str, Any]:
        """A ``keyed`` spec: ``policies`` (specs built per key) and ``key`` become ``factory`` and ``key``."""
        specs = options.pop("policies", None)
        if not isinstance(specs, list) or not specs:
            raise TypeError(f"{where}: 'policies' must be a non-empty list of policy specs, got {specs!r}")
        # Build once now, so that a bad inner spec fails configure(), not a call.
        for j, inner in enumerate(specs):
            self._build_spec(f"{where}, policies #{j}", inner)

        def factory(_key: Any) -> Policy:
            built = [self._build_spec(f"{where}, policies #{j}", inner) for j, inner in enumerate(specs)]
            return built[0] if len(built) == 1 else Pipeline(*built)

        options["factory"] = factory
        options["key"] = _key_function(options.get("key"), where)
        return options

    # -- use -----------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self._pipelines

    @property
    def names(self) -> list[str]:
        """The configured pipeline names, sorted."""
        return sorted(self._pipelines)

    def pipeline(self, name: str) -> Pipeline:
        """The pipeline configured now under ``name`` (a snapshot: it does not follow reloads).

        Raises:
            KeyError: no pipeline has that name.
        """
        try:
            return self._pipelines[name]
        except KeyError:
            raise KeyError(f"no pipeline named {name!r}; configured: {self.names}") from None

    def policy(self, name: str) -> Policy:
        """A policy that always runs the pipeline configured now under ``name``.

        Wrapped functions re-wrap themselves on the first call after a
        :meth:`configure`; between reloads the cost is one integer compare.
        """
        self.pipeline(name)  # fail early on a typo
        return _Reloadable(self, name)

    def status(self) -> dict[str, Any]:
        """Every pipeline with its policies' status, JSON-able."""
        return {
            name: [p.status() or {"type": p.policy_type} for p in pipeline]
            for name, pipeline in sorted(self._pipelines.items())
        }


def _key_function(spec: Any, where: str) -> Callable[..., Any]:
    """``key`` of a ``keyed`` spec: ``{arg = N}``, ``{kwarg = "name"}`` or ``"package.module:function"``."""
    if isinstance(spec, str) and ":" in spec:
        try:
            fn = _load(spec)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"{where}, option 'key': cannot import {spec!r}") from exc
        if not callable(fn):
            raise TypeError(f"{where}, option 'key': {spec!r} is not callable")
        return fn  # type: ignore[no-any-return]
    if isinstance(spec, Mapping) and len(spec) == 1:
        if isinstance(spec.get("arg"), int) and not isinstance(spec["arg"], bool) and spec["arg"] >= 0:
            index = spec["arg"]
            return lambda *args, **_: args[index]
        if isinstance(spec.get("kwarg"), str):
            name = spec["kwarg"]
            return lambda *_, **kwargs: kwargs[name]
    raise TypeError(
        f"{where}, option 'key' must be {{arg = <index >= 0>}}, {{kwarg = \"<name>\"}} "
        f'or "package.module:function", got {spec!r}'
    )


def _backoff(spec: Mapping[str, Any], where: str) -> Any:
    from resilient import backoff as backoffs

    options = dict(spec)
    kind = options.pop("type", "exponential")
    if kind not in _BACKOFF_TYPES:
        raise ValueError(f"{where}: unknown backoff type {kind!r}; known: {sorted(_BACKOFF_TYPES)}")
    try:
        return getattr(backoffs, kind)(**options)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{where}, backoff: {exc}") from exc


def _apply_env(specs: dict[str, list[Any]], prefix: str, environ: Mapping[str, str]) -> None:
    lowered = {name.lower(): name for name in specs}
    for key, raw in environ.items():
        if not key.startswith(prefix):
            continue
        parts = key[len(prefix) :].lower().split("__")
        if len(parts) != 3 or parts[0] not in lowered:
            continue
        pipeline, which, option = lowered[parts[0]], parts[1], parts[2]
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        for i, spec in enumerate(specs[pipeline]):
            if isinstance(spec, dict) and (which == str(i) or spec.get("type") == which):
                spec[option] = value


class _Reloadable(Policy):
    """A registry entry as a policy: follows :meth:`Registry.configure`."""

    policy_type = "registry"

    def __init__(self, registry: Registry, name: str) -> None:
        super().__init__(name=None)
        self._registry = registry
        self._pipeline_name = name

    def _current(self, fn: Any, site: EventSite, is_async: bool) -> tuple[int, Any]:
        registry = self._registry
        generation = registry.generation
        return generation, registry.pipeline(self._pipeline_name).build(fn, site, is_async)

    def build_async(self, fn: AsyncFn, site: EventSite) -> AsyncWrapped:
        registry = self._registry
        state = list(self._current(fn, site, True))

        async def registry_call(*args: Any, **kwargs: Any) -> Any:
            if state[0] != registry.generation:
                state[:] = self._current(fn, site, True)
            return await state[1](*args, **kwargs)

        return registry_call

    def build_sync(self, fn: SyncFn, site: EventSite) -> SyncFn:
        registry = self._registry
        state = list(self._current(fn, site, False))

        def registry_call(*args: Any, **kwargs: Any) -> Any:
            if state[0] != registry.generation:
                state[:] = self._current(fn, site, False)
            return state[1](*args, **kwargs)

        return registry_call

    def __repr__(self) -> str:
        return f"Registry.policy({self._pipeline_name!r})"
