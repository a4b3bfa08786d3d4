"""A circuit breaker's state shared by every replica: :class:`RedisBreakerStore`."""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import socket
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, cast

from resilient.breaker.state import BreakerConfig, BreakerMetrics, BreakerSnapshot, CircuitState
from resilient.breaker.store import InMemoryBreakerStore
from resilient.events import Listener
from resilient.redis._common import (
    ClientArg,
    Connector,
    FailOpen,
    LuaScript,
    SyncClient,
    key_part,
    logger,
    validate_common,
)
from resilient.validate import check_int, check_number

__all__ = ["BREAKER_SCRIPT", "QUORUM_SCRIPT", "RedisBreakerStore"]

_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN
_ISOLATED = CircuitState.ISOLATED
_STATES = {s.value: s for s in CircuitState}
_MANUAL = {_CLOSED: "reset()", _OPEN: "trip()", _ISOLATED: "isolate()"}

#: Every decision of a shared circuit, atomically, in one script. Times are
#: microseconds of Redis ``TIME`` (or of the breaker's clock, ``redis_time=False``).
#: KEYS: state hash, window hash, probe lease.
#: ARGV: op, permit epoch, batched successes, break duration (s) of an
#: opening caused by this op, transition target; the breaker's options; the time or nothing.
#: The reply gives the state with times relative to Redis' now, which the
#: client adds to its own clock.
BREAKER_SCRIPT = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
-- ARGV[3]: the breaker's clock in microseconds, or empty: Redis TIME (redis_time=True).
local now = tonumber(ARGV[3])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local S, W, P = KEYS[1], KEYS[2], KEYS[3]
-- ARGV[1]: 'op|permit epoch|batched successes|break (s)|target'; ARGV[2]: the options.
local op, pe, pend, brk, target = string.match(ARGV[1], '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
pe = tonumber(pe); pend = tonumber(pend); brk = tonumber(brk)
local rm, fratio, min_tp, cons_max, nb, width, ho_max, ho_succ, ttl =
  string.match(ARGV[2], '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
local ratio_mode = rm == '1'
fratio = tonumber(fratio); min_tp = tonumber(min_tp); cons_max = tonumber(cons_max); nb = tonumber(nb)
width = tonumber(width); ho_max = tonumber(ho_max); ho_succ = tonumber(ho_succ); ttl = tonumber(ttl)

local function n(x) return string.format('%.0f', x) end

local f = redis.call('HMGET', S, 'st', 'ep', 'since', 'until', 'fp', 'bd', 'prev', 'man', 'ps', 'cons', 'cc', 'cf',
  'wi', 'wc', 'wf')
local st, ep, since, untl, fp, bd, prev, man, ps, cons, cc, cf
-- The ratio window's running totals: wc calls and wf failures in the buckets
-- (wi - nb, wi], wi the bucket of the last count. nil wi: unknown, rescan W.
local wi, wc, wf
-- dirty: rewrite the whole state; touched: only the counters changed.
local dirty, touched, rolled = false, false, false
if f[1] then
  st = f[1]; ep = tonumber(f[2]); since = tonumber(f[3]); untl = tonumber(f[4]); fp = tonumber(f[5])
  bd = tonumber(f[6]); prev = f[7]; man = tonumber(f[8]); ps = tonumber(f[9]); cons = tonumber(f[10])
  cc = tonumber(f[11]); cf = tonumber(f[12])
  wi = tonumber(f[13]); wc = tonumber(f[14]) or 0; wf = tonumber(f[15]) or 0
else
  -- A new (or expired) circuit: closed, with an epoch no earlier one used.
  st = 'closed'; ep = now; since = now; untl = -1; fp = 0; bd = 0; prev = ''; man = 0; ps = 0
  cons = 0; cc = 0; cf = 0; wc = 0; wf = 0; dirty = true
end
-- A permit issued before this replica heard from Redis counts against the closed epoch.
if pe < 0 and st == 'closed' then pe = ep end
local changed, admitted = 0, 0
local idx = math.floor(now / width)

-- The window's counts at bucket idx, read from W: the buckets in
-- (idx - nb, idx], leaving out slot skip; also the bucket slot skip holds.
local function wscan(skip)
  local fields = {}
  for s = 0, nb - 1 do
    fields[#fields + 1] = 'i' .. s; fields[#fields + 1] = 'c' .. s; fields[#fields + 1] = 'f' .. s
  end
  local v = redis.call('HMGET', W, unpack(fields))
  local c, fl = 0, 0
  for s = 0, nb - 1 do
    local i = tonumber(v[3 * s + 1])
    if s ~= skip and i and i > idx - nb then
      c = c + tonumber(v[3 * s + 2]); fl = fl + tonumber(v[3 * s + 3])
    end
  end
  return c, fl, tonumber(v[3 * skip + 1])
end

local function wadd(calls, fails)
  if not ratio_mode then
    cc = cc + calls; cf = cf + fails; touched = true
    return
  end
  local s = idx % nb
  if wi ~= idx then
    -- A new bucket (once per bucket width), or totals unknown: recount the
    -- window from W, so the running totals never drift.
    local c, fl, si = wscan(s)
    wi = idx
    if si == idx then
      -- The bucket was started without running totals (an earlier script).
      local v = redis.call('HMGET', W, 'c' .. s, 'f' .. s)
      c = c + tonumber(v[1]); fl = fl + tonumber(v[2])
      redis.call('HINCRBY', W, 'c' .. s, calls)
      if fails > 0 then redis.call('HINCRBY', W, 'f' .. s, fails) end
    else
      redis.call('HSET', W, 'i' .. s, n(idx), 'c' .. s, calls, 'f' .. s, fails)
    end
    wc = c + calls; wf = fl + fails
    -- Expiries are refreshed once per bucket, not on every call.
    redis.call('PEXPIRE', W, math.ceil(width * nb / 1000) + 1000)
    rolled = true
  else
    wc = wc + calls; wf = wf + fails
    redis.call('HINCRBY', W, 'c' .. s, calls)
    if fails > 0 then redis.call('HINCRBY', W, 'f' .. s, fails) end
  end
  touched = true
end

local function wsum()
  if not ratio_mode then return cc, cf end
  if wi == idx then return wc, wf end
  local c, fl = wscan(-1)
  return c, fl
end

local function open_(nfp, dur, manual)
  prev = st; ep = ep + 1; st = 'open'; since = now; untl = now + dur * 1000000
  fp = nfp; bd = dur; man = manual; ps = 0; changed = 1; dirty = true
  redis.call('DEL', P)
end

local function close_(manual)
  prev = st; ep = ep + 1; st = 'closed'; since = now; untl = -1; fp = 0; man = manual; ps = 0
  cons = 0; cc = 0; cf = 0; wi = nil; wc = 0; wf = 0; changed = 1; dirty = true
  redis.call('DEL', P, W)
end

local function half_open_()
  -- The probe lease: a key that expires when the half-open period ends, so
  -- a probe whose process died gives its slot back by itself.
  prev = st; ep = ep + 1; st = 'half_open'; since = now; untl = now + bd * 1000000; man = 0; ps = 0
  changed = 1; dirty = true; admitted = 1
  redis.call('SET', P, 1, 'PX', math.max(1, math.ceil(bd * 1000)))
end

local function successes(k)
  if k > 0 and st == 'closed' and ep == pe then
    wadd(k, 0)
    if cons ~= 0 then cons = 0; touched = true end
  end
end

if op == 'sync' then
  successes(pend)
elseif op == 'failure' then
  successes(pend)
  if ep == pe then
    if st == 'half_open' then
      open_(fp + 1, brk, 0)
    elseif st == 'closed' then
      wadd(1, 1); cons = cons + 1; touched = true
      -- cons_max 0: ratio only; ratio_mode false: consecutive only; else whichever trips first.
      local trip = cons_max > 0 and cons >= cons_max
      if not trip and ratio_mode then
        local c, fl = wsum()
        trip = c >= min_tp and fl / c >= fratio
      end
      if trip then open_(0, brk, 0) end
    end
  end
elseif op == 'success' then
  if st == 'half_open' and ep == pe then
    if tonumber(redis.call('GET', P) or '0') > 0 then redis.call('DECR', P) end
    ps = ps + 1; dirty = true
    if ps >= ho_succ then close_(0) end
  else
    successes(pend)
  end
elseif op == 'acquire' then
  if st == 'closed' then
    admitted = 1
  elseif st == 'open' then
    if now >= untl then half_open_() end
  elseif st == 'half_open' then
    -- A free probe slot first; full past the period's end, the probes in
    -- flight are given up (as InMemoryBreakerStore does).
    if tonumber(redis.call('GET', P) or '0') < ho_max then
      redis.call('INCR', P)
      -- The lease lasts until the period ends (a whole break once it has).
      local left = untl - now
      if left <= 0 then left = bd * 1000000 end
      redis.call('PEXPIRE', P, math.max(1, math.ceil(left / 1000)))
      admitted = 1
    elseif now >= untl then
      half_open_()
    end
  end
elseif op == 'release' then
  if st == 'half_open' and ep == pe and tonumber(redis.call('GET', P) or '0') > 0 then
    redis.call('DECR', P)
  end
elseif op == 'transition' then
  if target == 'closed' then
    close_(1)
  elseif target == 'open' then
    local nfp = 0
    if st ~= 'closed' then nfp = fp end
    open_(nfp, brk, 1)
  else
    prev = st; ep = ep + 1; st = 'isolated'; since = now; untl = -1; fp = 0; ps = 0; man = 1
    changed = 1; dirty = true
    redis.call('DEL', P)
  end
end

local wis = ''
if wi then wis = n(wi) end
if dirty then
  redis.call('HSET', S, 'st', st, 'ep', n(ep), 'since', n(since), 'until', n(untl), 'fp', fp, 'bd', tostring(bd),
    'prev', prev, 'man', man, 'ps', ps, 'cons', cons, 'cc', cc, 'cf', cf, 'wi', wis, 'wc', wc, 'wf', wf)
elseif touched then
  if ratio_mode then
    redis.call('HSET', S, 'cons', cons, 'wi', wis, 'wc', wc, 'wf', wf)
  else
    redis.call('HSET', S, 'cons', cons, 'cc', cc, 'cf', cf)
  end
end
-- In ratio mode a count that starts no bucket (not rolled) falls in the
-- bucket whose start refreshed the expiry less than a bucket width ago, and
-- ttl >= 2 sampling durations: no need to refresh it on every call.
if dirty or rolled or (touched and not ratio_mode) then
  if st == 'isolated' then
    redis.call('PERSIST', S)
  else
    local keep = ttl
    if untl > now then keep = keep + math.ceil((untl - now) / 1000) end
    redis.call('PEXPIRE', S, keep)
  end
end

local calls, fails, inflight = 0, 0, 0
if op == 'metrics' then
  calls, fails = wsum()
  inflight = tonumber(redis.call('GET', P) or '0')
end
local inf, until_in = 1, 0
if untl >= 0 then inf = 0; until_in = untl - now end
return table.concat({st, n(ep), n(now - since), inf, n(until_in), fp, n(bd * 1000000), prev, man, changed,
  admitted, calls, fails, cons, inflight, ps}, '|')
"""

_SCRIPT = LuaScript(BREAKER_SCRIPT)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisBreakerStore:
    """Keeps a :class:`~resilient.CircuitBreaker`'s state in Redis, shared by every replica.

    ``CircuitBreaker(name="payments", store=RedisBreakerStore("redis://..."))``
    in each replica gives them one circuit: when one replica's failures open
    it, the others fail fast too, and exactly one of them (or
    ``half_open_max_calls``) gets each half-open probe.

    * Every decision is one Lua script run (one round trip): counting a
      failure (and opening), admitting a probe (and half-opening), counting a
      probe's outcome (and closing or reopening). The window's clock is Redis
      ``TIME``; times in the snapshots are converted to the breaker's clock.
    * Successes in the closed state are batched: counted locally and sent
      with the next failure, or at most ``sync_interval`` seconds later (that
      round trip also refreshes this replica's view of the circuit). A
      replica therefore learns that another one opened the circuit on its
      next failure, or on its first success ``sync_interval`` after its last
      sync; ``sync_interval=0`` sends every success (one round trip per call).
    * A replica's first call always asks Redis (through :meth:`aacquire`,
      atomically with the probe admission), whatever the store read at
      :meth:`bind` (or could not read, with an async client only): until
      then a circuit Redis reported CLOSED reads HALF_OPEN in
      :attr:`snapshot`, which makes the breaker ask the store.
    * The probe lease is a key that expires when the half-open period ends:
      a probe whose process dies frees its slot by expiry.
    * Keys (``{prefix}cb:{name}:state``, ``...:window``, ``...:probes``; the
      name, with ``%:{}`` percent-encoded, is a cluster hash tag) expire:
      the window after one sampling duration, the state after ``idle_ttl``
      seconds without a write (plus the remaining break; in ratio mode
      counted from the start of the last window bucket written, at most
      ``sampling_duration / 10`` earlier). Only an isolated circuit persists
      until reset.
    * Fail open: when Redis is unreachable, slow (``timeout``) or errors,
      the store switches to an :class:`~resilient.breaker.InMemoryBreakerStore`
      (starting open if the circuit was open), logs one warning on
      ``resilient.redis`` and emits ``store_failed_open``; a probe at most
      every ``recovery_interval`` seconds switches back when Redis answers
      (``store_recovered``), and Redis' state is authoritative again.

    * Redis Cluster: a ``redis+cluster://`` URL or a ``RedisCluster``
      client; the three keys share the name's hash slot, so every script
      runs on one master.
    * ``redis_time=False`` takes the time from the breaker's clock instead
      of Redis ``TIME`` (tests drive it with a
      :class:`~resilient.testing.FakeClock`; only where every replica
      shares one clock).

    Manual control (``isolate()``, ``reset()``, ``trip()``) and ``metrics``
    are synchronous: they use the sync client (from the URL, a
    ``redis.Redis`` or ``sync_client=``). One store serves one breaker.
    A manual transition made while failed open applies to this replica at
    once, logs a warning, and is written to Redis by the probe that finds
    Redis again, for every replica to see, unless this replica's circuit
    has moved on by itself by then (a ``trip()`` whose break ended and
    whose probe closed the circuit): then Redis' state stands.
    """

    def __init__(
        self,
        client_or_url: ClientArg,
        *,
        prefix: str = "resilient:",
        name: str | None = None,
        timeout: float = 0.05,
        sync_interval: float = 0.1,
        idle_ttl: float = 3600.0,
        recovery_interval: float = 1.0,
        sync_client: SyncClient | None = None,
        listeners: Iterable[Listener] = (),
        redis_time: bool = True,
        quorum: int | None = None,
        replica: str | None = None,
    ) -> None:
        validate_common(prefix, timeout, recovery_interval)
        if not isinstance(redis_time, bool):
            raise TypeError(f"redis_time must be a bool, got {redis_time!r}")
        self._redis_time = redis_time
        #: Quorum mode: how many replicas' own circuits must say open to open it for the fleet.
        self.quorum = check_int(quorum, "quorum", allow_none=True)
        if replica is not None and (not isinstance(replica, str) or not replica or "|" in replica):
            raise TypeError(f"replica must be a non-empty str without '|', or None, got {replica!r}")
        if replica is not None and quorum is None:
            raise ValueError("replica= names this replica's vote in quorum mode: set quorum= too")
        #: This replica's name in the votes of quorum mode (default: host, pid and a random part).
        self.replica = replica or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"name must be a non-empty str or None, got {name!r}")
        self.prefix = prefix
        self.name = name
        self.timeout = float(timeout)
        self.sync_interval = check_number(sync_interval, "sync_interval", strict=False, maximum=60, unit="seconds")
        self.idle_ttl = check_number(idle_ttl, "idle_ttl", minimum=1, strict=False, maximum=86400 * 30, unit="seconds")
        self._recovery_interval = float(recovery_interval)
        self._listeners = tuple(listeners)
        self._conn = Connector(client_or_url, sync_client, self.timeout)
        self._bound = False
        # Until bind(), a closed placeholder; the real one comes from Redis.
        self._snap = BreakerSnapshot(_CLOSED, -1, 0.0)
        # What the breaker reads (``snapshot``): the last snapshot from Redis,
        # except that a replica that has not yet asked Redis about a call
        # shows a closed circuit as the gate, so that its first call goes
        # through acquire() (see bind()).
        self._view = self._snap
        self._gate = self._snap
        self._gated = True
        self._local: InMemoryBreakerStore | None = None
        self._pending = 0
        self._next_sync = 0.0
        self._now = time.monotonic
        self._keys: tuple[str, str, str] = ("", "", "")
        self._cfg_arg = ""
        self._failopen: FailOpen | None = None
        # A manual transition made while failed open, and the local snapshot it made.
        self._manual: tuple[CircuitState, BreakerSnapshot] | None = None
        self._vkeys: tuple[str] = ("",)
        if self.quorum is not None:
            # The same store, deciding otherwise (each replica's own circuit, opened for all by a quorum).
            self.__class__ = _QuorumBreakerStore
            cast(_QuorumBreakerStore, self)._start_quorum(self.quorum)

    # -- binding ---------------------------------------------------------------

    def bind(self, config: BreakerConfig) -> None:
        """Take the breaker's options (once) and derive the keys from its name."""
        if self._bound:
            raise RuntimeError("this RedisBreakerStore is already bound to a breaker; give each breaker its own")
        name = self.name if self.name is not None else config.name
        if not name:
            raise ValueError(
                "RedisBreakerStore needs a name, which every replica shares: give the breaker a name or the store name="
            )
        self._bound = True
        self.name = name
        self._config = config
        clock = config.clock
        self._now = clock.now
        base = f"{self.prefix}cb:{{{key_part(name)}}}"
        self._keys = (f"{base}:state", f"{base}:window", f"{base}:probes")
        self._vkeys = (f"{base}:votes",)
        buckets = 10
        ratio = config.ratio_mode
        self._cfg_arg = "|".join(
            (
                "1" if ratio else "0",
                repr(config.failure_ratio),
                str(config.minimum_throughput),
                str(config.consecutive_failures or 0),
                str(buckets),
                repr(config.sampling_duration / buckets * 1e6),
                str(config.half_open_max_calls),
                str(config.half_open_successes),
                str(math.ceil(max(self.idle_ttl, 2 * config.sampling_duration) * 1000)),
            )
        )
        self._failopen = FailOpen(
            kind="circuit_breaker",
            name=name,
            where=self._conn.where,
            interval=self._recovery_interval,
            clock=clock,
            listeners=self._listeners,
        )
        now = self._now()
        self._snap = BreakerSnapshot(_CLOSED, -1, now)
        # Half-open past its end: the breaker admits nothing on it without
        # acquire(), which asks Redis (one round trip, once per replica). A
        # replica must not admit its first call on what it read at start
        # (perhaps long ago) or on nothing at all (an async client only).
        self._gate = BreakerSnapshot(_HALF_OPEN, -1, now, now)
        self._view = self._gate
        if self._conn.has_sync:
            # Start from the shared truth: a replica that starts while the
            # circuit is open fails fast from its first call.
            self.refresh()

    def refresh(self) -> BreakerSnapshot:
        """Send the batched successes and fetch the shared state now (one sync round trip)."""
        local = self._local_sync()
        if local is not None:
            return local.snapshot
        return self._refreshed(self._send(*self._sync_op()))

    async def arefresh(self) -> BreakerSnapshot:
        """Async :meth:`refresh`."""
        local = self._local_async()
        if local is not None:
            return local.snapshot
        return self._refreshed(await self._asend(*self._sync_op()))

    @property
    def keys(self) -> tuple[str, str, str]:
        """The state, window and probe-lease keys (after :meth:`bind`)."""
        return self._keys

    @property
    def using_redis(self) -> bool:
        """``False`` while the store has failed open to local state."""
        return self._failopen is None or self._failopen.healthy

    @property
    def snapshot(self) -> BreakerSnapshot:
        """The last snapshot Redis gave (or the local one while failed open); no I/O."""
        local = self._local
        if local is None:
            return self._view
        # Failed open: a breaker that is open locally rejects calls without
        # calling the store, so reading the snapshot is where a probe of
        # Redis gets started (in the background, at most once per interval).
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            assert self._failopen is not None
            self._failopen.aprobe(self._aprobe)
        return local.snapshot

    # -- Redis round trips ---------------------------------------------------------

    def _args(self, op: str, epoch: int, pending: int, brk: float, target: str) -> tuple[str, ...]:
        # Two arguments, one reply string: with redis-py's pure-Python parser
        # every extra element costs microseconds.
        head = f"{op}|{epoch}|{pending}|{brk!r}|{target}"
        if self._redis_time:
            return head, self._cfg_arg
        return head, self._cfg_arg, repr(self._now() * 1e6)

    def _apply(self, reply: Any, now: float) -> tuple[BreakerSnapshot, bool, bool]:
        """Turn a reply into (snapshot, changed by this op, admitted)."""
        res = _text(reply).split("|")
        state = _STATES[res[0]]
        epoch = int(res[1])
        cur = self._snap
        if cur.epoch == epoch and cur.state is state:
            snap = cur  # same epoch: keep the object, it is the permit of calls in flight
        else:
            until = math.inf if int(res[3]) else now + int(res[4]) / 1e6
            prev = res[7]
            snap = BreakerSnapshot(
                state,
                epoch,
                now - int(res[2]) / 1e6,
                until,
                int(res[5]),
                int(res[6]) / 1e6,
                _STATES[prev] if prev else None,
                bool(int(res[8])),
            )
            self._snap = snap
        if state is not _CLOSED:
            self._pending = 0
            self._view = snap
        else:
            self._view = self._gate if self._gated else snap
        return snap, bool(int(res[9])), bool(int(res[10]))

    async def _arun(self, op: str, epoch: int, pending: int = 0, brk: float = 0.0, target: str = "") -> Any:
        conn = self._conn
        client = conn.aclient()
        if conn.cluster:
            await conn.alayout(client)
        async with asyncio.timeout(self.timeout):
            return await _SCRIPT.arun(client, self._keys, self._args(op, epoch, pending, brk, target))

    def _run(self, op: str, epoch: int, pending: int = 0, brk: float = 0.0, target: str = "") -> Any:
        return _SCRIPT.run(self._conn.sclient(), self._keys, self._args(op, epoch, pending, brk, target))

    # -- failing open and back ---------------------------------------------------------

    def _fail_open(self, exc: BaseException) -> InMemoryBreakerStore:
        failopen = self._failopen
        assert failopen is not None
        failopen.failed(exc)
        local = self._local
        if local is None:
            local = InMemoryBreakerStore()
            local.bind(self._config)
            last = self._snap
            # Keep failing fast if the circuit was open: an outage of Redis
            # must not send a burst of calls to a dependency known to be down.
            if last.state is _OPEN or last.state is _HALF_OPEN:
                local.transition(_OPEN, self._now())
            elif last.state is _ISOLATED:
                local.transition(_ISOLATED, self._now())
            self._pending = 0
            self._local = local
        return local

    def _probe_op(self, manual: tuple[CircuitState, BreakerSnapshot] | None) -> tuple[str, float, str]:
        """What a probe sends: a manual transition made while failed open, or a plain sync."""
        local = self._local
        if manual is not None and local is not None and local.snapshot.epoch == manual[1].epoch:
            to, made = manual
            return "transition", made.break_duration if to is _OPEN else 0.0, to.value
        return "sync", 0.0, ""

    def _recovered_with(self, res: Any, manual: tuple[CircuitState, BreakerSnapshot] | None, op: str) -> None:
        if op == "transition":
            self._gated = False
        self._apply(res, self._now())
        self._local = None
        failopen = self._failopen
        assert failopen is not None
        failopen.recovered()
        if manual is not None:
            if self._manual is manual:
                self._manual = None
            what = _MANUAL[manual[0]]
            if op == "transition":
                logger.info(
                    "resilient: circuit_breaker %r: the %s made while Redis was away is written to Redis",
                    self.name,
                    what,
                )
            else:
                logger.info(
                    "resilient: circuit_breaker %r: the %s made while Redis was away is not written to Redis: "
                    "this replica's circuit had moved on by itself; Redis' state (%s) stands",
                    self.name,
                    what,
                    self._snap.state.value,
                )

    async def _aprobe(self) -> None:
        manual = self._manual
        op, brk, target = self._probe_op(manual)
        self._recovered_with(await self._arun(op, self._snap.epoch, 0, brk, target), manual, op)

    def _probe(self) -> None:
        manual = self._manual
        op, brk, target = self._probe_op(manual)
        self._recovered_with(self._run(op, self._snap.epoch, 0, brk, target), manual, op)

    def _failed_over(self, blocking: bool) -> InMemoryBreakerStore | None:
        """The local store while failed open (a probe of Redis started first, if due); ``None`` on Redis."""
        if self._local is not None:
            failopen = self._failopen
            assert failopen is not None
            if blocking:
                failopen.probe_sync(self._probe)
            else:
                failopen.aprobe(self._aprobe)
        return self._local  # a sync probe may have found Redis again

    def _local_async(self) -> InMemoryBreakerStore | None:
        return self._failed_over(blocking=False)

    def _local_sync(self) -> InMemoryBreakerStore | None:
        return self._failed_over(blocking=True)

    def _fallback(self) -> InMemoryBreakerStore:
        """The local store, right after a failed round trip made it."""
        local = self._local
        assert local is not None
        return local

    def _break_for(self, permit: BreakerSnapshot) -> float:
        cfg = self._config
        if permit.state is _HALF_OPEN:
            return cfg.break_duration_for(permit.failed_probes + 1, permit.break_duration)
        return cfg.break_duration_for(0, permit.break_duration)

    # -- decisions around the round trips (no I/O) ------------------------------------

    def _ours(self, permit: BreakerSnapshot) -> bool:
        """Whether an outcome goes to Redis: a permit of the shared snapshot, while Redis is in use."""
        return permit is self._snap and self._local is None

    def _sync_op(self) -> tuple[str, int, int]:
        """A sync of the batched successes (which also fetches the shared state)."""
        self._next_sync = self._now() + self.sync_interval
        pending, self._pending = self._pending, 0
        return "sync", self._snap.epoch, pending

    def _success_op(self, now: float | None) -> tuple[str, int, int] | None:
        """What a success sends: a probe's success, the batch when a sync is due, or nothing (batched)."""
        snap = self._snap
        if snap.state is not _CLOSED:
            return "success", snap.epoch, 0
        self._pending += 1
        if now is None:
            now = self._now()
        if now < self._next_sync:
            return None
        self._next_sync = now + self.sync_interval
        pending, self._pending = self._pending, 0
        return "sync", snap.epoch, pending

    def _failure_op(self) -> tuple[str, int, int, float]:
        """A failure, sent with the batched successes and the break an opening would take."""
        snap = self._snap
        pending, self._pending = self._pending, 0
        return "failure", snap.epoch, pending, self._break_for(snap)

    def _acquired(self, reply: Any, now: float) -> tuple[BreakerSnapshot | None, BreakerSnapshot | None] | None:
        """What :meth:`acquire` returns for a reply (``None``: Redis failed; the local store answers)."""
        if reply is None:
            return None
        self._gated = False
        snap, changed, admitted = self._apply(reply, now)
        return (snap if admitted else None), (snap if changed else None)

    def _outcome(self, reply: Any, now: float | None, synced: bool = False) -> BreakerSnapshot | None:
        """The transition a reply reports, if this outcome caused one (``None`` also when Redis failed)."""
        if reply is None:
            return None
        if now is None:
            now = self._now()
        if synced:  # the round trip sent the batch: the next sync is due an interval from now
            self._next_sync = now + self.sync_interval
        new, changed, _ = self._apply(reply, now)
        return new if changed else None

    def _refreshed(self, reply: Any) -> BreakerSnapshot:
        return self._fallback().snapshot if reply is None else self._apply(reply, self._now())[0]

    # -- the protocol: each sync method is its async twin without ``await`` ------------
    #
    # tests/test_breaker_shells.py compares their syntax trees.

    async def _asend(self, op: str, epoch: int, pending: int = 0, brk: float = 0.0, target: str = "") -> Any:
        """One script run: the reply, or ``None`` when Redis failed (the store has then failed open)."""
        try:
            return await self._arun(op, epoch, pending, brk, target)
        except Exception as exc:  # Redis trouble never fails the call
            self._fail_open(exc)
            return None

    def _send(self, op: str, epoch: int, pending: int = 0, brk: float = 0.0, target: str = "") -> Any:
        """Sync :meth:`_asend`."""
        try:
            return self._run(op, epoch, pending, brk, target)
        except Exception as exc:  # Redis trouble never fails the call
            self._fail_open(exc)
            return None

    async def aacquire(self, now: float) -> tuple[BreakerSnapshot | None, BreakerSnapshot | None]:
        """Admit a probe (or a replica's first call) or refuse, atomically across replicas (one round trip)."""
        local = self._local_async()
        if local is None:
            acquired = self._acquired(await self._asend("acquire", self._snap.epoch), now)
            if acquired is not None:
                return acquired
            local = self._fallback()
        return local.acquire(now)

    def acquire(self, now: float) -> tuple[BreakerSnapshot | None, BreakerSnapshot | None]:
        """Sync :meth:`aacquire`."""
        local = self._local_sync()
        if local is None:
            acquired = self._acquired(self._send("acquire", self._snap.epoch), now)
            if acquired is not None:
                return acquired
            local = self._fallback()
        return local.acquire(now)

    async def arecord_success(self, permit: BreakerSnapshot, now: float | None = None) -> BreakerSnapshot | None:
        """Count a success: batched while closed, one round trip for a probe."""
        if self._ours(permit):
            op = self._success_op(now)
            return None if op is None else self._outcome(await self._asend(*op), now)
        local = self._local_async()
        return None if local is None else local.record_success(permit, now)

    def record_success(self, permit: BreakerSnapshot, now: float | None = None) -> BreakerSnapshot | None:
        """Sync :meth:`arecord_success`."""
        if self._ours(permit):
            op = self._success_op(now)
            return None if op is None else self._outcome(self._send(*op), now)
        local = self._local_sync()
        return None if local is None else local.record_success(permit, now)

    async def arecord_failure(self, permit: BreakerSnapshot, now: float | None = None) -> BreakerSnapshot | None:
        """Count a failure (with the batched successes) and maybe open: one round trip."""
        if self._ours(permit):
            return self._outcome(await self._asend(*self._failure_op()), now, synced=True)
        local = self._local_async()
        return None if local is None else local.record_failure(permit, now)

    def record_failure(self, permit: BreakerSnapshot, now: float | None = None) -> BreakerSnapshot | None:
        """Sync :meth:`arecord_failure`."""
        if self._ours(permit):
            return self._outcome(self._send(*self._failure_op()), now, synced=True)
        local = self._local_sync()
        return None if local is None else local.record_failure(permit, now)

    async def arelease(self, permit: BreakerSnapshot) -> None:
        """Free a probe slot (one round trip, for a half-open permit only)."""
        if self._ours(permit):
            if permit.state is _HALF_OPEN:
                self._outcome(await self._asend("release", permit.epoch), None)
            return
        local = self._local_async()
        if local is not None:
            local.release(permit)

    def release(self, permit: BreakerSnapshot) -> None:
        """Sync :meth:`arelease`."""
        if self._ours(permit):
            if permit.state is _HALF_OPEN:
                self._outcome(self._send("release", permit.epoch), None)
            return
        local = self._local_sync()
        if local is not None:
            local.release(permit)

    def transition(self, to: CircuitState, now: float) -> BreakerSnapshot:
        """Manual control, for every replica: CLOSED (reset), OPEN (trip) or ISOLATED."""
        if to not in (_CLOSED, _OPEN, _ISOLATED):
            raise ValueError(f"to must be CLOSED, OPEN or ISOLATED, got {to!r}")
        if not self._conn.has_sync:
            raise TypeError("manual control of a RedisBreakerStore needs a URL, a redis.Redis client or sync_client=")
        local = self._local_sync()
        if local is None:
            snap = self._snap
            brk = 0.0
            if to is _OPEN:
                failed = snap.failed_probes if snap.state is not _CLOSED else 0
                brk = self._config.break_duration_for(failed, snap.break_duration)
            reply = self._send("transition", snap.epoch, 0, brk, to.value)
            if reply is not None:
                self._pending = 0
                self._gated = False
                return self._apply(reply, now)[0]
            local = self._fallback()
        # Redis is away: the transition applies here now and is written to
        # Redis by the probe that finds it again (unless this replica's
        # circuit has moved on by itself by then), so that recovery neither
        # undoes it silently nor keeps it from the other replicas.
        snap = local.transition(to, now)
        self._manual = (to, snap)
        assert self._failopen is not None
        logger.warning(
            "resilient: circuit_breaker %r: %s applied to this replica only, Redis at %s is away; it is written "
            "to Redis when it answers again (unless this replica's circuit has moved on by itself by then)",
            self.name,
            _MANUAL[to],
            self._failopen.where,
        )
        return snap

    def metrics(self, now: float) -> BreakerMetrics:
        """The shared counters (one synchronous round trip; local ones while failed open)."""
        local = self._local_sync() if self._conn.has_sync else self._local
        if local is None:
            if not self._conn.has_sync:
                return self._cached_metrics(now)
            reply = self._send("metrics", self._snap.epoch)
            if reply is None:
                local = self._fallback()
            else:
                snap = self._apply(reply, now)[0]
                res = _text(reply).split("|")
                calls, failures = int(res[11]) + self._pending, int(res[12])
                return BreakerMetrics(
                    state=snap.state,
                    calls=calls,
                    failures=failures,
                    failure_ratio=failures / calls if calls else 0.0,
                    consecutive_failures=int(res[13]),
                    probes_in_flight=int(res[14]),
                    probe_successes=int(res[15]),
                    retry_after=snap.retry_after(now),
                )
        return local.metrics(now)

    def _cached_metrics(self, now: float) -> BreakerMetrics:
        snap = self._snap
        return BreakerMetrics(snap.state, 0, 0, 0.0, 0, 0, 0, snap.retry_after(now))

    # -- housekeeping -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Backend details for a status page."""
        out: dict[str, Any] = {"keys": list(self._keys), "sync_interval": self.sync_interval}
        if self._failopen is not None:
            out.update(self._failopen.status())
        manual = self._manual
        if manual is not None and self._local is not None:
            out["manual_pending"] = manual[0].value  # to be written to Redis when it answers
        return out

    async def aclose(self) -> None:
        """Close the connections this store opened from a URL."""
        await self._conn.aclose()

    def close(self) -> None:
        """Close the sync connection this store opened from a URL."""
        self._conn.close_sync()

    def __repr__(self) -> str:
        local = self._local
        state = (self._snap if local is None else local.snapshot).state
        return f"RedisBreakerStore(name={self.name!r}, state={state.value!r}, redis={self.using_redis})"


#: Quorum mode: one replica states its own verdict and counts the fleet's, atomically. KEYS: the
#: votes hash (replica -> when its vote lapses, microseconds). ARGV: replica, seconds its vote
#: lasts (0: it withdraws), quorum, milliseconds the hash outlives its last vote, the time in
#: microseconds or nothing (Redis ``TIME``). Lapsed votes are removed. Reply: ``votes|lapse``,
#: ``lapse`` the microseconds until fewer than ``quorum`` votes remain (0 when already fewer).
QUORUM_SCRIPT = """
local now = tonumber(ARGV[5])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local V, me, ttl, k, keep = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if ttl > 0 then
  redis.call('HSET', V, me, string.format('%.0f', now + ttl * 1000000))
else
  redis.call('HDEL', V, me)
end
local all = redis.call('HGETALL', V)
local fresh = {}
for i = 1, #all, 2 do
  local lapses = tonumber(all[i + 1])
  if lapses and lapses > now then
    fresh[#fresh + 1] = lapses
  else
    redis.call('HDEL', V, all[i])
  end
end
table.sort(fresh, function(a, b) return a > b end)
local lapse = 0
if #fresh >= k then lapse = fresh[k] - now end
if #fresh > 0 then redis.call('PEXPIRE', V, keep + math.ceil((fresh[1] - now) / 1000)) end
return string.format('%d|%.0f', #fresh, lapse)
"""

_QUORUM_SCRIPT = LuaScript(QUORUM_SCRIPT)

# The one refusal acquire() gives behind an open fleet circuit.
_REFUSED: tuple[None, None] = (None, None)
# What a sync round trip gives when the store has no sync client (nothing was sent).
_UNSENT: Any = object()


class _QuorumBreakerStore(RedisBreakerStore):
    """``RedisBreakerStore(..., quorum=k)``: each replica's own circuit, opened for the fleet by ``k`` of them.

    Every replica keeps its own circuit (an :class:`InMemoryBreakerStore`:
    its window, its probes), which protects it whatever the others say. Its
    verdict (open, half-open or isolated: a vote, lasting until its break
    or half-open period ends; closed: no vote) goes to one hash of votes
    shared by the fleet, on each transition of its own circuit and at most
    every ``sync_interval`` seconds with a success, and the same round trip
    counts the fresh votes. While ``k`` or more replicas vote open, a
    replica whose own circuit is closed rejects too (its snapshot is the
    fleet's OPEN one, until the votes are counted again). A vote that lapses
    (its replica died, or stopped calling) stops counting.
    """

    def _start_quorum(self, quorum: int) -> None:
        self._k = quorum
        self._own = InMemoryBreakerStore()
        self._fleet: BreakerSnapshot | None = None
        self._fleet_epochs = 0
        self._votes = 0

    # -- binding ---------------------------------------------------------------

    def bind(self, config: BreakerConfig) -> None:
        """Take the breaker's options (once); with a sync client, count the fleet's votes now."""
        self._own.bind(config)
        self._view = self._own.snapshot
        super().bind(config)  # keys and the fail-open switch; calls refresh() with a sync client
        self._gated = False
        self._show()

    @property
    def votes_key(self) -> str:
        """The hash of the replicas' votes (after :meth:`bind`)."""
        return self._vkeys[0]

    @property
    def votes(self) -> int:
        """Fresh votes for open at the last count (this replica's included)."""
        return self._votes

    @property
    def snapshot(self) -> BreakerSnapshot:
        """This replica's circuit, or the fleet's OPEN one while its own is closed; no I/O."""
        return self._view

    # -- decisions (no I/O) --------------------------------------------------------------

    def _behind(self) -> bool:
        """Whether this replica rejects only because of the fleet."""
        return self._fleet is not None and self._view is self._fleet

    def _show(self) -> None:
        own = self._own.snapshot
        fleet = self._fleet
        self._view = fleet if fleet is not None and own.state is _CLOSED else own

    def _ballot(self, moved: BreakerSnapshot | None, now: float | None, due: bool = False) -> float | None:
        """The seconds this replica's vote lasts (0: no vote) when a round trip is due, else ``None``."""
        if now is None:
            now = self._now()
        if moved is None and not due and now < self._next_sync:
            return None
        failopen = self._failopen
        assert failopen is not None
        if not failopen.healthy and not failopen.probe_due():
            return None
        self._next_sync = now + self.sync_interval
        own = self._own.snapshot
        if own.state is _CLOSED:
            return 0.0
        if own.state is _ISOLATED:
            return self.idle_ttl
        return max(0.0, own.until - now)  # an OPEN circuit past its break has no fresh verdict

    def _tally(
        self, moved: BreakerSnapshot | None, ttl: float | None, reply: Any, now: float | None
    ) -> BreakerSnapshot | None:
        """Apply a count (``ttl`` set: a round trip was made; ``reply`` ``None``: it failed): what to report."""
        if reply is _UNSENT:
            ttl = None
        if ttl is None and moved is None:
            return None
        if now is None:
            now = self._now()
        fleet = self._fleet
        behind = self._behind()
        if ttl is not None:
            votes, lapse = 0, 0.0
            if reply is not None:
                counted = _text(reply).split("|")
                votes, lapse = int(counted[0]), float(counted[1])
            self._votes = votes
            if votes < self._k:
                self._fleet = None  # also when Redis is away: fail open to this replica's own circuit
            else:
                until = now + min(lapse / 1e6, self.sync_interval)
                if fleet is None:
                    self._fleet_epochs += 1
                    self._fleet = BreakerSnapshot(_OPEN, -1 - self._fleet_epochs, now, until, 0, lapse / 1e6, _CLOSED)
                else:
                    self._fleet = replace(fleet, until=until)
        self._show()
        if self._behind():
            if behind and moved is None:
                return None
            logger.warning(
                "resilient: circuit_breaker %r: %d replicas say open (quorum %d): open here too",
                self.name,
                self._votes,
                self._k,
            )
            return self._fleet
        if behind:  # the fleet let go: this replica's own (closed) circuit decides again
            return BreakerSnapshot(_CLOSED, -1 - self._fleet_epochs, now, math.inf, 0, 0.0, _OPEN)
        return moved

    def _admission(self, behind: bool, permit: BreakerSnapshot | None, now: float) -> BreakerSnapshot | None:
        if behind and not self._behind():
            permit = self._own.acquire(now)[0]
        return permit

    def _vote_args(self, ttl: float) -> tuple[str, ...]:
        keep = str(math.ceil(self.idle_ttl * 1000))
        if self._redis_time:
            return self.replica, repr(ttl), str(self._k), keep
        return self.replica, repr(ttl), str(self._k), keep, repr(self._now() * 1e6)

    # -- the round trip ------------------------------------------------------------------

    async def _acast(self, ttl: float) -> Any:
        """State this replica's vote and count the fleet's: the reply, or ``None`` (Redis failed)."""
        conn = self._conn
        try:
            client = conn.aclient()
            if conn.cluster:
                await conn.alayout(client)
            async with asyncio.timeout(self.timeout):
                return self._answered(await _QUORUM_SCRIPT.arun(client, self._vkeys, self._vote_args(ttl)))
        except Exception as exc:  # Redis trouble never fails the call
            return self._unanswered(exc)

    def _cast(self, ttl: float) -> Any:
        """Sync :meth:`_acast` (``_UNSENT`` without a sync client: the next async round trip votes)."""
        if not self._conn.has_sync:
            return _UNSENT
        try:
            return self._answered(_QUORUM_SCRIPT.run(self._conn.sclient(), self._vkeys, self._vote_args(ttl)))
        except Exception as exc:  # Redis trouble never fails the call
            return self._unanswered(exc)

    async def _avote(
        self, moved: BreakerSnapshot | None, now: float | None, due: bool = False
    ) -> BreakerSnapshot | None:
        """State this replica's vote and count the fleet's when a ballot is due (one round trip); the view's move."""
        ttl = self._ballot(moved, now, due=due)
        return self._tally(moved, ttl, None if ttl is None else await self._acast(ttl), now)

    def _vote(self, moved: BreakerSnapshot | None, now: float | None, due: bool = False) -> BreakerSnapshot | None:
        """Sync :meth:`_avote`."""
        ttl = self._ballot(moved, now, due=due)
        return self._tally(moved, ttl, None if ttl is None else self._cast(ttl), now)

    def _answered(self, reply: Any) -> Any:
        failopen = self._failopen
        assert failopen is not None
        if not failopen.healthy:
            failopen.recovered()
        return reply

    def _unanswered(self, exc: Exception) -> None:
        assert self._failopen is not None
        self._failopen.failed(exc)

    # -- the protocol: each sync method is its async twin without ``await`` ------------

    async def aacquire(self, now: float) -> tuple[BreakerSnapshot | None, BreakerSnapshot | None]:
        """Admit a probe of this replica's circuit, or count the fleet's votes again behind an open fleet."""
        behind = self._behind()
        permit, moved = _REFUSED if behind else self._own.acquire(now)
        moved = await self._avote(moved, now, behind)
        return self._admission(behind, permit, now), moved

    def acquire(self, now: float) -> tuple[BreakerSnapshot | None, BreakerSnapshot | None]:
        """Sync :meth:`aacquire`."""
        behind = self._behind()
        permit, moved = _REFUSED if behind else self._own.acquire(now)
        moved = self._vote(moved, now, behind)
        return self._admission(behind, permit, now), moved

    async def arecord_success(self, permit: BreakerSnapshot, now: float | None = None) -> BreakerSnapshot | None:
        """Count a success on this replica's circuit; every ``sync_interval``, count the fleet's votes."""
        return await self._avote(self._own.record_success(permit, now), now)

    def record_success(self, permit: BreakerSnapshot, now: float | None = None) -> BreakerSnapshot | None:
        """Sync :meth:`arecord_success`."""
        return self._vote(self._own.record_success(permit, now), now)

    async def arecord_failure(self, permit: BreakerSnapshot, now: float | None = None) -> BreakerSnapshot | None:
        """Count a failure on this replica's circuit; a transition states its vote."""
        return await self._avote(self._own.record_failure(permit, now), now)

    def record_failure(self, permit: BreakerSnapshot, now: float | None = None) -> BreakerSnapshot | None:
        """Sync :meth:`arecord_failure`."""
        return self._vote(self._own.record_failure(permit, now), now)

    async def arelease(self, permit: BreakerSnapshot) -> None:
        """Free a probe slot of this replica's circuit (no round trip)."""
        self._own.release(permit)

    def release(self, permit: BreakerSnapshot) -> None:
        """Free a probe slot of this replica's circuit (no round trip)."""
        self._own.release(permit)

    async def arefresh(self) -> BreakerSnapshot:
        """State this replica's vote and count the fleet's now (one round trip)."""
        await self._avote(None, None, True)
        return self._view

    def refresh(self) -> BreakerSnapshot:
        """Sync :meth:`arefresh`."""
        self._vote(None, None, True)
        return self._view

    def transition(self, to: CircuitState, now: float) -> BreakerSnapshot:
        """Manual control of this replica's circuit (and so of its vote)."""
        moved = self._own.transition(to, now)
        return self._vote(moved, now) or moved

    def metrics(self, now: float) -> BreakerMetrics:
        """This replica's counters; the state is the one its calls meet (the fleet's while it is open)."""
        view = self._view
        return replace(self._own.metrics(now), state=view.state, retry_after=view.retry_after(now))

    def status(self) -> dict[str, Any]:
        """Backend details for a status page, the quorum's included."""
        out: dict[str, Any] = {
            "keys": [self.votes_key],
            "sync_interval": self.sync_interval,
            "quorum": self._k,
            "replica": self.replica,
            "votes": self._votes,
            "fleet_open": self._fleet is not None,
            "own_state": self._own.snapshot.state.value,
        }
        if self._failopen is not None:
            out.update(self._failopen.status())
        return out

    def __repr__(self) -> str:
        return (
            f"RedisBreakerStore(name={self.name!r}, quorum={self._k}, replica={self.replica!r}, "
            f"state={self._view.state.value!r}, redis={self.using_redis})"
        )


# It is a RedisBreakerStore in quorum mode, made by RedisBreakerStore(quorum=k): status pages and
# reprs name it so.
_QuorumBreakerStore.__name__ = _QuorumBreakerStore.__qualname__ = "RedisBreakerStore"
