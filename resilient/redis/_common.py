"""What the Redis stores share: connections, Lua scripts and the fail-open switch."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis as _sync_redis
import redis.asyncio as _aio_redis
from redis.asyncio.cluster import ClusterNode as _AioNode
from redis.asyncio.cluster import RedisCluster as _AioCluster
from redis.asyncio.connection import SSLConnection as _AioSSLConnection
from redis.asyncio.connection import parse_url as _aio_parse_url
from redis.asyncio.retry import Retry as _AsyncRetry
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode as _SyncNode
from redis.cluster import RedisCluster as _SyncCluster
from redis.connection import SSLConnection as _SyncSSLConnection
from redis.connection import parse_url as _sync_parse_url
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    ClusterError,
    MovedError,
    NoScriptError,
    ResponseError,
    TryAgainError,
)
from redis.retry import Retry as _SyncRetry

from resilient import events
from resilient.clock import Clock
from resilient.events import EXTRA_BACKEND, EXTRA_WHERE, EventSite, Listener, Severity
from resilient.validate import check_number

__all__ = [
    "CLUSTER_LAYOUT_TIMEOUT",
    "REFUSED_WARNING_INTERVAL",
    "AsyncClient",
    "ClientArg",
    "Connector",
    "FailOpen",
    "LuaScript",
    "SyncClient",
    "key_part",
    "logger",
    "refused",
    "validate_common",
]

#: Every warning and info line of the Redis stores goes to this logger.
logger = logging.getLogger("resilient.redis")

#: Seconds a Redis Cluster client may take to read the cluster's layout (see :meth:`Connector.alayout`).
CLUSTER_LAYOUT_TIMEOUT = 1.0

#: An async client: a single Redis or a Redis Cluster.
AsyncClient = _aio_redis.Redis | _AioCluster
#: A sync client: a single Redis or a Redis Cluster.
SyncClient = _sync_redis.Redis | _SyncCluster
#: What a store connects with: a URL or a client.
ClientArg = str | AsyncClient | SyncClient


def validate_common(prefix: str, timeout: float, recovery_interval: float) -> None:
    """Check the options every store takes; raise naming the parameter."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {prefix!r}")
    check_number(timeout, "timeout", maximum=60, unit="seconds")
    check_number(recovery_interval, "recovery_interval", maximum=3600, unit="seconds")


# ":" separates the parts of a key and braces make a Redis Cluster hash tag:
# a name or key holding either must not be able to pass for another one.
# Escaping "%" as well keeps the encoding injective; other characters (and
# so the keys of ordinary names) stay as they are.
_KEY_ESCAPES = str.maketrans({"%": "%25", ":": "%3A", "{": "%7B", "}": "%7D"})


def key_part(text: str) -> str:
    """``text`` as one part of a Redis key: ``%``, ``:``, ``{`` and ``}`` percent-encoded.

    Distinct texts always give distinct parts, and a part never contains a
    separator or a brace, so ``{prefix}rl:{name}:{key}`` and the breaker's
    ``{name}`` hash tag are unambiguous.
    """
    return text.translate(_KEY_ESCAPES)


def _redact_url(url: str) -> str:
    # Only scheme, host, port and database ever reach a log line: never a
    # user name, a password or a query string (which can hold credentials).
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
        path = parts.path if parts.path not in ("", "/") else ""
    except ValueError:
        return "redis"
    return f"{parts.scheme}://{host}{port}{path}"


# "redis+cluster://[user[:password]@]host:port[,host:port...][/0][?options]", as the
# Python `limits` library spells it: the first host carries the options, every host is a startup node.
_CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def _parse_cluster_url(url: str) -> tuple[str, list[tuple[str, int]]]:
    """A one-node URL that carries the options, and every (host, port); ``ValueError`` naming the parameter."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        try:
            node = urlsplit(f"//{item.strip()}")
            host, port = node.hostname, node.port or 6379
        except ValueError:
            host = None
        if not host:
            raise ValueError(f"client_or_url: {item.strip()!r} is not a host[:port] of a cluster URL")
        nodes.append((host, port))
    if parts.path not in ("", "/", "/0"):
        raise ValueError("client_or_url: a Redis Cluster has database 0 only; leave the path out of the URL")
    scheme = parts.scheme.removesuffix("+cluster")
    first = hosts.split(",")[0].strip()
    return urlunsplit((scheme, f"{userinfo}{at}{first}", "", parts.query, "")), nodes


def _cluster_kwargs(kw: dict[str, Any], ssl_class: type, timeout: float) -> dict[str, Any]:
    for one_node_only in ("host", "port", "db", "path"):
        kw.pop(one_node_only, None)
    if kw.pop("connection_class", None) is ssl_class:
        kw["ssl"] = True
    # As Redis.from_url: what the URL's query says wins over the store's defaults.
    return {"socket_timeout": timeout, "socket_connect_timeout": timeout, **kw}


def _async_cluster(options: str, nodes: list[tuple[str, int]], timeout: float) -> _AioCluster:
    kw = _cluster_kwargs(dict(_aio_parse_url(options)), _AioSSLConnection, timeout)
    return _AioCluster(startup_nodes=[_AioNode(h, p) for h, p in nodes], retry=_AsyncRetry(NoBackoff(), 0), **kw)


def _sync_cluster(options: str, nodes: list[tuple[str, int]], timeout: float) -> _SyncCluster:
    kw = _cluster_kwargs(dict(_sync_parse_url(options)), _SyncSSLConnection, timeout)  # type: ignore[no-untyped-call]
    startup = [_SyncNode(h, p) for h, p in nodes]  # type: ignore[no-untyped-call]
    return _SyncCluster(startup_nodes=startup, retry=_SyncRetry(NoBackoff(), 0), **kw)


def _redact_cluster_url(url: str, nodes: list[tuple[str, int]]) -> str:
    # As _redact_url: hosts and ports only, never the user info or the query.
    scheme = url.split("://", 1)[0]
    return f"{scheme}://" + ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in nodes)


def _describe_client(client: Any) -> str:
    if isinstance(client, _AioCluster | _SyncCluster):
        try:
            names = sorted(client.nodes_manager.startup_nodes)
        except AttributeError:
            return type(client).__name__
        return "redis+cluster://" + ",".join(names)
    try:
        kw = client.connection_pool.connection_kwargs
    except AttributeError:
        return type(client).__name__
    if "path" in kw:
        return f"unix://{kw['path']}"
    return f"redis://{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"


class _LoopGone(Exception):
    """Thrown into a client's closer when its loop ended without running it."""


def _start(closer: AsyncGenerator[None, None]) -> None:
    # Runs the closer to its ``yield`` without awaiting: its first step never
    # suspends, and starting it is what registers it with the running loop.
    with contextlib.suppress(StopIteration):
        closer.asend(None).send(None)


def _abandon(closer: AsyncGenerator[None, None]) -> None:
    # Ends a closer without running its cleanup, so that the garbage
    # collector never hands it to a closed loop's finalizer hook.
    with contextlib.suppress(StopIteration, StopAsyncIteration, _LoopGone):
        closer.athrow(_LoopGone()).send(None)


class Connector:
    """Gives the async and sync clients a store uses, from a URL or given clients.

    From a URL, clients are made on demand with the store's timeout as
    socket timeouts and without redis-py's own retries (the store decides
    what a failure means); an async client is made per event loop, because
    redis-py's asyncio connections belong to the loop that opened them, and
    closed as that loop ends (``asyncio.run()`` and ``asyncio.Runner`` close
    it while the loop still runs; a loop closed without
    ``shutdown_asyncgens()`` leaves its client to the garbage collector,
    dropped when the next loop makes its own). A ``redis+cluster://`` (or
    ``rediss+cluster://``) URL makes Redis Cluster clients, with every host
    listed as a startup node.
    Given clients (``redis.Redis``, ``redis.asyncio.Redis`` or either
    ``RedisCluster``) are used as they are: their TLS, auth and timeouts are
    their owner's business.
    """

    __slots__ = (
        "_aclient",
        "_amake",
        "_current",
        "_lock",
        "_loops",
        "_sclient",
        "_smake",
        "cluster",
        "timeout",
        "where",
    )

    def __init__(self, client_or_url: ClientArg, sync_client: SyncClient | None, timeout: float) -> None:
        self.timeout = timeout
        self._amake: Callable[[], AsyncClient] | None = None
        self._smake: Callable[[], SyncClient] | None = None
        self._aclient: AsyncClient | None = None
        self._sclient: SyncClient | None = None
        #: Whether the clients talk to a Redis Cluster.
        self.cluster = False
        # The last loop's client, read in one step so that two threads'
        # loops never get each other's client; every loop's, with the closer
        # that closes it when that loop ends.
        self._current: tuple[asyncio.AbstractEventLoop, AsyncClient] | None = None
        self._loops: dict[asyncio.AbstractEventLoop, tuple[AsyncClient, AsyncGenerator[None, None]]] = {}
        self._lock = threading.Lock()
        if isinstance(client_or_url, str):
            if client_or_url.startswith(_CLUSTER_SCHEMES):
                options, nodes = _parse_cluster_url(client_or_url)
                self._amake = lambda: _async_cluster(options, nodes, timeout)
                self._smake = lambda: _sync_cluster(options, nodes, timeout)
                self.cluster = True
                self.where = _redact_cluster_url(client_or_url, nodes)
            elif client_or_url.startswith(("redis://", "rediss://", "unix://")):
                url = client_or_url
                self._amake = lambda: _aio_redis.Redis.from_url(
                    url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=_AsyncRetry(NoBackoff(), 0)
                )
                self._smake = lambda: _sync_redis.Redis.from_url(
                    url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=_SyncRetry(NoBackoff(), 0)
                )
                self.where = _redact_url(client_or_url)
            else:
                raise ValueError(
                    "client_or_url must be a redis://, rediss://, unix://, redis+cluster:// or rediss+cluster:// "
                    "URL, or a redis-py client"
                )
        elif isinstance(client_or_url, _aio_redis.Redis | _AioCluster):
            self._aclient = client_or_url
            self.cluster = isinstance(client_or_url, _AioCluster)
            self.where = _describe_client(client_or_url)
        elif isinstance(client_or_url, _sync_redis.Redis | _SyncCluster):
            self._sclient = client_or_url
            self.cluster = isinstance(client_or_url, _SyncCluster)
            self.where = _describe_client(client_or_url)
        else:
            raise TypeError(
                "client_or_url must be a URL or a redis.asyncio.Redis / redis.Redis / RedisCluster client, "
                f"got {type(client_or_url).__name__}"
            )
        if sync_client is not None:
            if not isinstance(sync_client, _sync_redis.Redis | _SyncCluster):
                raise TypeError(
                    f"sync_client must be a redis.Redis or redis.cluster.RedisCluster, got {type(sync_client).__name__}"
                )
            self._sclient = sync_client

    @property
    def has_async(self) -> bool:
        """Whether async calls can reach Redis."""
        return self._amake is not None or self._aclient is not None

    @property
    def has_sync(self) -> bool:
        """Whether sync calls can reach Redis."""
        return self._smake is not None or self._sclient is not None

    def aclient(self) -> AsyncClient:
        """The async client for the running loop."""
        make = self._amake
        if make is None:
            if self._aclient is None:
                raise TypeError("this store was given a sync client only; async calls need a URL or an async client")
            return self._aclient
        loop = asyncio.get_running_loop()
        current = self._current
        if current is not None and current[0] is loop:
            return current[1]
        return self._client_for(loop, make)

    async def acall(self, op: Callable[[AsyncClient], Awaitable[Any]]) -> Any:
        """``await op(client)`` with the running loop's client (a cluster's layout read first), within ``timeout``."""
        client = self.aclient()
        if self.cluster:
            await self.alayout(client)
        async with asyncio.timeout(self.timeout):
            return await op(client)

    async def alayout(self, client: AsyncClient) -> None:
        """Let a cluster client that does not know the cluster's layout yet read it, bounded.

        Reading the layout (``CLUSTER SLOTS`` and ``COMMAND``, one node each)
        takes longer than one operation's ``timeout``: a replica's first call
        and the probes after a cluster error wait up to
        :data:`CLUSTER_LAYOUT_TIMEOUT` seconds for it (a cluster that is away
        refuses the connections at once), so that a loaded machine's first
        call does not time out and fail open over it.
        """
        # redis-py's own flag (set until the layout is read, and again after a
        # cluster error); a client without it is taken as ready.
        if getattr(client, "_initialize", False):
            async with asyncio.timeout(max(self.timeout, CLUSTER_LAYOUT_TIMEOUT)):
                await client.initialize()

    def _client_for(self, loop: asyncio.AbstractEventLoop, make: Callable[[], AsyncClient]) -> AsyncClient:
        made = None
        with self._lock:
            gone = self._sweep()
            entry = self._loops.get(loop)
            if entry is None:
                client = make()
                made = self._close_with_loop(client)
                entry = self._loops[loop] = (client, made)
            self._current = (loop, entry[0])
        if made is not None:
            _start(made)
        for closer in gone:
            _abandon(closer)
        return entry[0]

    def _sweep(self) -> list[AsyncGenerator[None, None]]:
        # Under the lock: forget the clients of loops that ended without
        # closing them (nothing can run on a closed loop any more).
        current = self._current
        if current is not None and current[0].is_closed():
            self._current = None
        gone = [loop for loop in self._loops if loop.is_closed()]
        return [self._loops.pop(loop)[1] for loop in gone]

    async def _close_with_loop(self, client: AsyncClient) -> AsyncGenerator[None, None]:
        # Started on the client's loop; asyncio.run() finalises it (with
        # shutdown_asyncgens()) while that loop still runs, the last moment
        # its connections can be closed properly.
        try:
            yield
        except _LoopGone:
            return
        except GeneratorExit:
            self._forget(asyncio.get_running_loop(), client)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.timeout):
                    await client.aclose()
            raise

    def _forget(self, loop: asyncio.AbstractEventLoop, client: AsyncClient) -> None:
        with self._lock:
            entry = self._loops.get(loop)
            if entry is not None and entry[0] is client:
                del self._loops[loop]
            current = self._current
            if current is not None and current[1] is client:
                self._current = None

    def sclient(self) -> SyncClient:
        """The sync client (thread-safe: redis-py pools its connections).

        A sync cluster client reads the cluster's layout when it is made: if
        that fails (the cluster is away), the error goes to the caller (the
        store fails open) and the next call tries again.
        """
        if self._sclient is None:
            make = self._smake
            if make is None:
                raise TypeError(
                    "this store was given an async client only; synchronous calls need a URL, "
                    "a redis.Redis / RedisCluster client or sync_client="
                )
            with self._lock:
                if self._sclient is None:
                    self._sclient = make()
        return self._sclient

    async def aclose(self) -> None:
        """Close the clients this connector made itself (given ones stay open).

        The async client closed is the running loop's; other loops' clients
        are closed as their loops end.
        """
        if self._amake is None:
            return
        loop = asyncio.get_running_loop()
        with self._lock:
            gone = self._sweep()
            entry = self._loops.pop(loop, None)
            current = self._current
            if current is not None and current[0] is loop:
                self._current = None
        for closer in gone:
            _abandon(closer)
        if entry is not None:
            _abandon(entry[1])
            await entry[0].aclose()
        self.close_sync()

    def close_sync(self) -> None:
        """Close the sync client this connector made itself."""
        if self._smake is None:
            return
        sclient, self._sclient = self._sclient, None
        if sclient is not None:
            sclient.close()


class LuaScript:
    """One Lua script run with EVALSHA, loaded again when Redis forgot it."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def arun(self, client: AsyncClient, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run the script (one round trip, two after a Redis restart)."""
        try:
            return await client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.execute_command("EVAL", self.source, len(keys), *keys, *args)

    def run(self, client: SyncClient, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Synchronous :meth:`arun`."""
        try:
            return client.execute_command(  # type: ignore[no-untyped-call]
                "EVALSHA", self.sha, len(keys), *keys, *args
            )
        except NoScriptError:
            return client.execute_command(  # type: ignore[no-untyped-call]
                "EVAL", self.source, len(keys), *keys, *args
            )


#: How often a configuration error is logged again while it lasts, in seconds.
REFUSED_WARNING_INTERVAL = 60.0

# Redis answered, but no: a password, an ACL, a read-only replica, a full
# memory, a key of the wrong type. Waiting does not fix these; someone must.
_REFUSALS = (AuthenticationError, AuthorizationError, ResponseError)
# Replies a cluster gives while it reshards or fails over: an outage.
_TRANSIENT_REPLIES = (ClusterError, AskError, TryAgainError)


def refused(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis refusing (a configuration error) rather than Redis being away.

    ``MOVED`` is one: a cluster client follows it by itself, so a store that
    sees it was given a plain client (or URL) for a node of a Redis Cluster.
    """
    if isinstance(exc, MovedError):
        return True
    return isinstance(exc, _REFUSALS) and not isinstance(exc, _TRANSIENT_REPLIES)


def _describe_error(exc: BaseException, is_refusal: bool) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    name = type(exc).__name__
    if not is_refusal:
        return name
    # Redis' own words (never the credentials, which it does not echo),
    # bounded: they say which command, user or key is refused.
    text = " ".join(str(exc).split())[:200]
    if isinstance(exc, MovedError):
        text += " (a node of a Redis Cluster: connect with a redis+cluster:// URL or a RedisCluster client)"
    return f"{name}: {text}" if text else name


class FailOpen:
    """Whether a store uses Redis or its local state, and the switch between them.

    The first failure of an outage logs ONE warning on ``resilient.redis``
    and emits ``STORE_FAILED_OPEN``; from then on calls use local state and
    do not touch Redis, except for one probe at most every
    ``recovery_interval`` seconds (a background task for async callers, an
    inline bounded call for sync ones). The first probe that succeeds logs
    one info line, emits ``STORE_RECOVERED`` and switches back.

    When Redis answers but refuses (authentication, ACL, read-only replica,
    out of memory, see :func:`refused`) the store fails open just the same,
    but the warning is repeated every :data:`REFUSED_WARNING_INTERVAL`
    seconds while the probes keep being refused, and :meth:`status` says so:
    a configuration error does not end by itself.
    """

    __slots__ = (
        "_lock",
        "_next_warning",
        "_probe_task",
        "clock",
        "configuration_error",
        "error",
        "healthy",
        "interval",
        "kind",
        "listeners",
        "name",
        "next_probe",
        "outages",
        "where",
    )

    def __init__(
        self,
        *,
        kind: str,
        name: str | None,
        where: str,
        interval: float,
        clock: Clock,
        listeners: tuple[Listener, ...],
    ) -> None:
        #: ``True`` while Redis answers; read by every call, so a plain attribute.
        self.healthy = True
        self.kind = kind
        self.name = name
        self.where = where
        self.interval = interval
        self.clock = clock
        self.listeners = listeners
        self.next_probe = 0.0
        #: How many times this store has failed open (for status()).
        self.outages = 0
        #: While failed open: what the last failure was (type, and Redis' words for a refusal).
        self.error: str | None = None
        #: While failed open: whether Redis refused (a configuration error) rather than was away.
        self.configuration_error = False
        self._next_warning = 0.0
        self._lock = threading.Lock()
        self._probe_task: asyncio.Task[None] | None = None

    def _emit(self, site: EventSite | None, name: str, severity: Severity, exc: BaseException | None) -> None:
        site = site if site is not None else EventSite(operation=self.name)
        if site.enabled(self.listeners):
            site.emit(
                self.listeners,
                name,
                severity,
                self.kind,
                self.name,
                exception=exc,
                extras={EXTRA_BACKEND: "redis", EXTRA_WHERE: self.where},
            )

    def failed(self, exc: BaseException, site: EventSite | None = None) -> None:
        """Record a failed Redis operation (a call's or a probe's); warn once per outage.

        A refusal warns again every :data:`REFUSED_WARNING_INTERVAL` seconds.
        """
        is_refusal = refused(exc)
        reason = _describe_error(exc, is_refusal)
        now = self.clock.now()  # a custom clock is user code: read it before taking the lock
        with self._lock:
            self.next_probe = now + self.interval
            self.error = reason
            self.configuration_error = is_refusal
            first = self.healthy
            if first:
                self.healthy = False
                self.outages += 1
            warn = first or (is_refusal and now >= self._next_warning)
            if warn and is_refusal:
                self._next_warning = now + REFUSED_WARNING_INTERVAL
        if not warn:
            logger.debug("resilient: Redis probe for %r failed: %s", self.name, reason)
            return
        if is_refusal:
            logger.warning(
                "resilient: %s %r: Redis at %s refused (%s), a configuration error (authentication, ACL, "
                "read-only replica, memory...); failing open to local in-memory state, checking Redis again "
                "every %.3g s and repeating this warning every %.3g s while it lasts",
                self.kind,
                self.name,
                self.where,
                reason,
                self.interval,
                REFUSED_WARNING_INTERVAL,
            )
        else:
            logger.warning(
                "resilient: %s %r cannot use Redis at %s (%s); failing open to local in-memory state, "
                "checking Redis again every %.3g s",
                self.kind,
                self.name,
                self.where,
                reason,
                self.interval,
            )
        if first:
            self._emit(site, events.STORE_FAILED_OPEN, Severity.WARNING, exc)

    def recovered(self, site: EventSite | None = None) -> None:
        """Record that Redis answered again."""
        with self._lock:
            if self.healthy:
                return
            self.healthy = True
            self.error = None
            self.configuration_error = False
        logger.info("resilient: %s %r uses Redis at %s again", self.kind, self.name, self.where)
        self._emit(site, events.STORE_RECOVERED, Severity.INFO, None)

    def probe_due(self) -> bool:
        """Whether a probe should run now; at most one per interval gets ``True``."""
        now = self.clock.now()
        with self._lock:
            if now < self.next_probe:
                return False
            self.next_probe = now + self.interval
            return True

    def aprobe(self, probe: Callable[[], Any], site: EventSite | None = None) -> None:
        """Start ``probe()`` (a coroutine function) in the background if one is due."""
        if not self.probe_due():
            return
        task = self._probe_task
        if task is not None and not task.done():
            return
        self._probe_task = asyncio.get_running_loop().create_task(self._run_probe(probe, site))

    async def _run_probe(self, probe: Callable[[], Any], site: EventSite | None) -> None:
        try:
            await probe()
        except Exception as exc:
            self.failed(exc, site)
            return
        self.recovered(site)

    def probe_sync(self, probe: Callable[[], Any], site: EventSite | None = None) -> bool:
        """Run ``probe()`` inline if one is due; ``True`` when Redis answered."""
        if not self.probe_due():
            return False
        try:
            probe()
        except Exception as exc:
            self.failed(exc, site)
            return False
        self.recovered(site)
        return True

    def status(self) -> dict[str, Any]:
        """What the status endpoint shows about the backend."""
        return {
            "backend": "redis",
            "where": self.where,
            "redis_healthy": self.healthy,
            "failed_open": not self.healthy,
            "outages": self.outages,
            "error": self.error,
            "configuration_error": self.configuration_error,
        }
