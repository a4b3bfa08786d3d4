"""RedisBreakerStore: one circuit shared by several breakers and processes, failing open."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from resilient import events
from resilient.breaker import AsyncBreakerStore, CircuitBreaker, CircuitState
from resilient.errors import CircuitOpenError
from resilient.redis import RedisBreakerStore
from resilient.testing import FakeClock, recording
from tests.redis_helpers import RedisServer, eventually, redis_server, redis_warnings, run_together  # noqa: F401 - fixture

# Per-operation Redis timeout for tests that are not about slowness: generous, so that a loaded CI
# machine never fails open by accident (the library default is 50 ms).
T = 2.0

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parent.parent


async def fail() -> None:
    raise ConnectionError("upstream down")


async def ok() -> str:
    return "ok"


def breaker(url: str, name: str = "pay", **kw: object) -> CircuitBreaker:
    store_kw = {
        k: kw.pop(k) for k in ("sync_interval", "recovery_interval", "timeout", "prefix", "redis_time") if k in kw
    }
    # Generous unless a test is about slowness: a loaded CI machine must not fail open by accident.
    store_kw.setdefault("timeout", T)
    return CircuitBreaker(name=name, store=RedisBreakerStore(url, **store_kw), **kw)  # type: ignore[arg-type]


async def until_recovered(cb: CircuitBreaker, clock: FakeClock, call: Callable[[], Awaitable[object]]) -> None:
    """Let ``cb``'s store probe Redis (started by ``call``) until it uses Redis again.

    The first probe after a restart can fail on a pooled connection to the old server (the store
    does not retry); the next one reconnects.
    """
    failopen = cb.store._failopen  # type: ignore[attr-defined]
    for _ in range(3):
        clock.advance(1.0)
        with contextlib.suppress(CircuitOpenError):
            await call()
        await eventually(lambda: failopen._probe_task is not None and failopen._probe_task.done())
        if failopen.healthy:
            return
    raise AssertionError("the store did not recover")


def warning_texts(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in redis_warnings(caplog)]


async def fail_n(cb: CircuitBreaker, n: int) -> None:
    guarded = cb(fail)
    for _ in range(n):
        with pytest.raises((ConnectionError, CircuitOpenError)):
            await guarded()


def run_workers(code: str, *args: str, n: int) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        for _ in range(n)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err.decode()
        outs.append(out.decode().strip())
    return outs


@pytest.fixture
async def rclient(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:  # noqa: F811
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


# -- sharing -----------------------------------------------------------------------


async def test_store_implements_the_async_protocol(redis_server: RedisServer) -> None:  # noqa: F811
    store = RedisBreakerStore(redis_server.url, timeout=T)
    assert isinstance(store, AsyncBreakerStore)
    with pytest.raises(ValueError, match="name"):
        CircuitBreaker(store=store)
    with pytest.raises(ValueError, match="sync_interval"):
        RedisBreakerStore(redis_server.url, sync_interval=-1)
    cb = CircuitBreaker(name="x", store=RedisBreakerStore(redis_server.url, timeout=T))
    with pytest.raises(RuntimeError, match="already bound"):
        CircuitBreaker(name="y", store=cb.store)


OPENER = """
    import asyncio, sys
    from resilient.breaker import CircuitBreaker
    from resilient.redis import RedisBreakerStore

    async def fail():
        raise ConnectionError("down")

    async def main(url):
        store = RedisBreakerStore(url, timeout=2.0)
        cb = CircuitBreaker(name="pay", consecutive_failures=3, break_duration=30, store=store)
        for _ in range(3):
            try:
                await cb(fail)()
            except ConnectionError:
                pass
        print(cb.state.value)

    asyncio.run(main(sys.argv[1]))
"""

CHECKER = """
    import asyncio, sys
    from resilient.breaker import CircuitBreaker
    from resilient.errors import CircuitOpenError
    from resilient.redis import RedisBreakerStore

    calls = 0

    async def work():
        global calls
        calls += 1

    async def main(url):
        store = RedisBreakerStore(url, timeout=2.0)
        cb = CircuitBreaker(name="pay", consecutive_failures=3, break_duration=30, store=store)
        try:
            await cb(work)()
            print("admitted", calls)
        except CircuitOpenError as exc:
            print("rejected", calls, round(exc.retry_after))

    asyncio.run(main(sys.argv[1]))
"""


async def test_one_process_opens_the_other_fails_fast(redis_server: RedisServer) -> None:  # noqa: F811
    # A long-lived breaker in this process, closed and in use.
    here = breaker(redis_server.url, consecutive_failures=3, break_duration=30)
    assert await here(ok)() == "ok"
    # Another process opens the circuit...
    assert run_workers(OPENER, redis_server.url, n=1) == ["open"]
    # ...a process that starts now fails fast on its first call, without calling...
    out = run_workers(CHECKER, redis_server.url, n=1)[0].split()
    assert out[:2] == ["rejected", "0"]
    assert 25 <= int(out[2]) <= 30
    # ...and this one learns it at its next sync and fails fast from then on.
    await here.store.arefresh()  # type: ignore[attr-defined]
    assert here.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError) as info:
        await here(ok)()
    assert info.value.retry_after is not None
    assert info.value.retry_after > 25


async def test_a_replica_learns_from_its_next_outcome(redis_server: RedisServer) -> None:  # noqa: F811
    a = breaker(redis_server.url, consecutive_failures=2, break_duration=30)
    b = breaker(redis_server.url, consecutive_failures=2, break_duration=30, sync_interval=0)
    assert await b(ok)() == "ok"
    with recording() as rec:
        await fail_n(a, 2)
    assert a.state is CircuitState.OPEN
    # Only the replica whose failure opened the circuit reports the transition.
    assert [e.name for e in rec.events if e.name == events.CIRCUIT_OPENED] == [events.CIRCUIT_OPENED]
    assert b.state is CircuitState.CLOSED  # b has not heard from Redis yet
    assert await b(ok)() == "ok"  # the call that was already admitted; its outcome brings the news
    assert b.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError):
        await b(ok)()


async def test_ratio_window_counts_every_replicas_calls(redis_server: RedisServer) -> None:  # noqa: F811
    opts = {"failure_ratio": 0.5, "minimum_throughput": 10, "sampling_duration": 10, "break_duration": 30}
    good = breaker(redis_server.url, sync_interval=0, **opts)
    bad = breaker(redis_server.url, **opts)
    for _ in range(5):
        await good(ok)()
    await fail_n(bad, 4)
    assert bad.state is CircuitState.CLOSED  # 4/9 calls
    assert good.metrics.calls == 9
    await fail_n(bad, 1)  # 5/10: the shared window opens it
    assert bad.state is CircuitState.OPEN


async def test_successes_are_batched_and_sent_with_the_next_failure(redis_server: RedisServer) -> None:  # noqa: F811
    a = breaker(redis_server.url, sync_interval=60, failure_ratio=0.5, minimum_throughput=4, sampling_duration=10)
    other = breaker(redis_server.url, sync_interval=0, failure_ratio=0.5, minimum_throughput=4, sampling_duration=10)
    for _ in range(3):
        await a(ok)()  # counted locally: the last sync (at bind) is less than 60 s old
    assert other.metrics.calls == 0
    await fail_n(a, 1)
    m = other.metrics
    assert (m.calls, m.failures) == (4, 1)
    assert a.state is CircuitState.CLOSED


async def test_keys_are_namespaced_and_expire(redis_server: RedisServer, rclient: aioredis.Redis) -> None:  # noqa: F811
    cb = breaker(redis_server.url, name="inventory", prefix="svc:", failure_ratio=0.5, sampling_duration=2)
    await cb(ok)()
    await fail_n(cb, 1)
    keys = sorted(await rclient.keys("*"))
    assert keys == ["svc:cb:{inventory}:state", "svc:cb:{inventory}:window"]
    assert cb.store.keys[0] == "svc:cb:{inventory}:state"  # type: ignore[attr-defined]
    assert 0 < await rclient.pttl("svc:cb:{inventory}:window") <= 3000
    assert 0 < await rclient.pttl("svc:cb:{inventory}:state") <= 3600 * 1000
    cb.isolate()
    assert await rclient.pttl("svc:cb:{inventory}:state") == -1  # held until reset()
    cb.reset()
    assert await rclient.pttl("svc:cb:{inventory}:state") > 0


def hash_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes: between the first "{" and the next "}"."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start + 1 : end] if start >= 0 and end > start + 1 else key


async def test_breaker_names_make_unambiguous_hash_tags(redis_server: RedisServer) -> None:  # noqa: F811
    # Issue 14 item 24: the name is the cluster hash tag; a "}" in it cut the tag short, so
    # "pay}eu" and "pay}us" hashed as "pay", and a ":" made the keys ambiguous to read.
    stores = [breaker(redis_server.url, name=n).store for n in ("pay}eu", "pay}us", "pay", "pay:eu", "{pay}")]
    keysets = [s.keys for s in stores]  # type: ignore[attr-defined]
    tags = [hash_tag(k) for keys in keysets for k in keys]
    for keys in keysets:
        assert len({hash_tag(k) for k in keys}) == 1  # one slot per breaker
    assert len(set(tags)) == len(stores)  # and one tag per name
    assert keysets[2] == ("resilient:cb:{pay}:state", "resilient:cb:{pay}:window", "resilient:cb:{pay}:probes")
    assert keysets[0][0] == "resilient:cb:{pay%7Deu}:state"


async def test_manual_control_reaches_every_replica(redis_server: RedisServer) -> None:  # noqa: F811
    a = breaker(redis_server.url, sync_interval=0)
    b = breaker(redis_server.url, sync_interval=0)
    a.isolate()
    await b.store.arefresh()  # type: ignore[attr-defined]
    with pytest.raises(CircuitOpenError, match="isolated"):
        await b(ok)()
    a.reset()
    await b.store.arefresh()  # type: ignore[attr-defined]
    assert await b(ok)() == "ok"


# -- the half-open probe ------------------------------------------------------------

FRESH = """
    import asyncio, sys
    import redis.asyncio as aioredis
    from resilient.breaker import CircuitBreaker
    from resilient.errors import CircuitOpenError
    from resilient.redis import RedisBreakerStore

    async def main(url, n, index):
        # Half the replicas get a URL (they read the state at bind), half an async client only
        # (they cannot read anything before their first call).
        kind = "url" if index % 2 == 0 else "client"
        side = aioredis.Redis.from_url(url, socket_timeout=30)
        await side.ping()
        client = url if kind == "url" else aioredis.Redis.from_url(url)
        store = RedisBreakerStore(client, timeout=2.0)
        cb = CircuitBreaker(name="fresh", consecutive_failures=1, break_duration=30, store=store)
        ready()

        async def call():
            # A slow dependency: an admitted call lasts until every other replica has been
            # rejected, so that none of them can find the circuit closed again by this one.
            for _ in range(n - 1):
                if await side.blpop("rejected", timeout=10) is None:
                    break

        try:
            await cb(call)()
            print("admitted")
        except CircuitOpenError:
            await side.rpush("rejected", 1)
            print("rejected")

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


def open_shared_circuit(url: str) -> None:
    """Open circuit "fresh" for 30 s from this process (sync, with its own store)."""
    opener = CircuitBreaker(
        name="fresh", consecutive_failures=1, break_duration=30, store=RedisBreakerStore(url, timeout=T)
    )

    @opener
    def down() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        down()
    assert opener.state is CircuitState.OPEN
    opener.store.close()  # type: ignore[attr-defined]


def end_the_break(url: str) -> None:
    """The break of circuit "fresh" is over, for every replica at once."""
    client = sync_redis.Redis.from_url(url)
    client.hset("resilient:cb:{fresh}:state", "until", "0")
    client.close()


def test_fresh_replicas_fail_fast_on_their_first_call(redis_server: RedisServer) -> None:  # noqa: F811
    # Issue 14 item 9: replicas made while the circuit was closed (or with an async client, which
    # reads nothing at bind) admitted their first call on a stale or placeholder CLOSED snapshot.
    outs = run_together(FRESH, redis_server.url, "2", n=2, between=lambda: open_shared_circuit(redis_server.url))
    assert outs == ["rejected", "rejected"]


@pytest.mark.parametrize("start", ["closed", "after the break"])
def test_one_of_eight_fresh_replicas_gets_the_half_open_probe(redis_server: RedisServer, start: str) -> None:  # noqa: F811
    # Issue 14 item 9: eight fresh processes calling just after the break all ran the probe.
    # The replicas start while the circuit is closed (it opens, and its break ends, before their
    # first call), or once its break is over already.
    def open_and_end_the_break() -> None:
        open_shared_circuit(redis_server.url)
        end_the_break(redis_server.url)

    if start == "after the break":
        open_and_end_the_break()
    between = open_and_end_the_break if start == "closed" else None
    outs = run_together(FRESH, redis_server.url, "8", n=8, between=between)
    assert sorted(outs) == ["admitted"] + ["rejected"] * 7


async def test_a_dead_probe_releases_its_lease_by_expiry(redis_server: RedisServer, rclient: aioredis.Redis) -> None:  # noqa: F811
    # Real time on purpose: this is the store's test of the server clock path. The break ends on
    # Redis TIME and the lease is a key redis-server expires (PX) on its own clock; no FakeClock
    # reaches either. The other tests that wait for the circuit run on a FakeClock (redis_time=False).
    a = breaker(redis_server.url, consecutive_failures=1, break_duration=0.2)
    b = breaker(redis_server.url, consecutive_failures=1, break_duration=0.2)
    await fail_n(a, 1)
    await asyncio.sleep(0.25)  # the 0.2 s break, on Redis TIME
    # a takes the probe and "dies": its outcome never comes.
    permit, moved = await a.store.aacquire(a.clock.now())  # type: ignore[attr-defined]
    assert permit is not None
    assert moved is not None
    assert moved.state is CircuitState.HALF_OPEN
    assert await rclient.get(a.store.keys[2]) == "1"  # type: ignore[attr-defined]
    await b.store.arefresh()  # type: ignore[attr-defined]
    with pytest.raises(CircuitOpenError, match="half-open"):
        await b(ok)()
    pttl = await rclient.pttl(a.store.keys[2])  # type: ignore[attr-defined]
    assert 0 < pttl <= 200
    await asyncio.sleep(0.25)  # the lease's PX expiry, on redis-server's clock
    # The lease expired with the half-open period: b probes, succeeds, closes.
    assert await b(ok)() == "ok"
    assert b.state is CircuitState.CLOSED
    # The dead probe's late outcome belongs to an old epoch and is ignored.
    assert await a.store.arecord_failure(permit) is None  # type: ignore[attr-defined]
    await a.store.arefresh()  # type: ignore[attr-defined]
    assert a.state is CircuitState.CLOSED


async def test_probe_failure_reopens_with_a_longer_break(redis_server: RedisServer) -> None:  # noqa: F811
    clock = FakeClock()
    cb = breaker(
        redis_server.url,
        consecutive_failures=1,
        break_duration=lambda n, last: 0.1 * (n + 1),
        clock=clock,
        redis_time=False,
    )
    await fail_n(cb, 1)
    assert cb.store.snapshot.break_duration == pytest.approx(0.1)
    clock.advance(0.1)  # the break is over: the next call is the probe
    await fail_n(cb, 1)  # the probe fails
    snap = cb.store.snapshot
    assert snap.state is CircuitState.OPEN
    assert snap.failed_probes == 1
    assert snap.break_duration == pytest.approx(0.2)


def test_sync_functions_use_the_sync_client(redis_server: RedisServer) -> None:  # noqa: F811
    cb = breaker(redis_server.url, consecutive_failures=2, break_duration=30)

    @cb
    def sync_fail() -> None:
        raise ConnectionError("down")

    for _ in range(2):
        with pytest.raises(ConnectionError):
            sync_fail()
    with pytest.raises(CircuitOpenError):
        sync_fail()
    other = breaker(redis_server.url, consecutive_failures=2, break_duration=30)
    assert other.state is CircuitState.OPEN


# -- fail open -----------------------------------------------------------------------------


async def test_sigkill_fails_open_keeps_calls_flowing_and_recovers(
    redis_server: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    cb = breaker(redis_server.url, consecutive_failures=3, break_duration=30, sync_interval=0, clock=clock)
    guarded = cb(ok)
    assert await guarded() == "ok"
    caplog.set_level(logging.INFO, logger="resilient.redis")
    redis_server.kill()
    with recording() as rec:
        for _ in range(50):
            assert await guarded() == "ok"  # a Redis outage never fails a call
        assert not cb.store.using_redis  # type: ignore[attr-defined]
        # The local state still protects: failures open the circuit locally.
        await fail_n(cb, 3)
        assert cb.state is CircuitState.OPEN
        assert len(redis_warnings(caplog)) == 1
        assert [e.name for e in rec.events if e.name.startswith("store_")] == [events.STORE_FAILED_OPEN]

        redis_server.restart()
        clock.advance(1.0)
        with pytest.raises(CircuitOpenError):
            await guarded()  # locally open; this call also starts the probe
        await eventually(lambda: cb.store.using_redis)  # type: ignore[attr-defined]
        assert [e.name for e in rec.events if e.name.startswith("store_")] == [
            events.STORE_FAILED_OPEN,
            events.STORE_RECOVERED,
        ]
    # Redis' state (a fresh, closed circuit) is authoritative again.
    assert cb.state is CircuitState.CLOSED
    assert await guarded() == "ok"
    assert len(redis_warnings(caplog)) == 1


async def test_sigstop_slow_redis_fails_open_within_the_timeout(
    redis_server: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    cb = breaker(redis_server.url, consecutive_failures=3, sync_interval=0, clock=clock, timeout=0.05)
    guarded = cb(ok)
    assert await guarded() == "ok"
    caplog.set_level(logging.WARNING, logger="resilient.redis")
    redis_server.pause()
    try:
        start = time.monotonic()
        assert await guarded() == "ok"
        assert time.monotonic() - start < 0.5  # the 50 ms timeout, with a loaded machine's slack
        start = time.monotonic()
        for _ in range(100):
            assert await guarded() == "ok"
        assert time.monotonic() - start < 0.5  # failed open: nobody waits for Redis
        assert len(redis_warnings(caplog)) == 1
        clock.advance(1.0)
        await guarded()  # a probe, which times out in the background
        # It times out on the loop's own timer (asyncio.timeout, the Redis timeout), which a FakeClock
        # does not drive: wait, in real time, for it to end.
        await eventually(lambda: cb.store._failopen._probe_task.done())  # type: ignore[attr-defined]
        assert not cb.store.using_redis  # type: ignore[attr-defined]
    finally:
        redis_server.resume()
    clock.advance(1.0)
    await guarded()
    await eventually(lambda: cb.store.using_redis)  # type: ignore[attr-defined]
    assert await guarded() == "ok"
    assert len(redis_warnings(caplog)) == 1


async def test_an_open_circuit_stays_open_when_redis_goes_away(redis_server: RedisServer) -> None:  # noqa: F811
    cb = breaker(redis_server.url, consecutive_failures=1, break_duration=30)
    await fail_n(cb, 1)
    redis_server.kill()
    await cb.store.arefresh()  # type: ignore[attr-defined]
    assert not cb.store.using_redis  # type: ignore[attr-defined]
    with pytest.raises(CircuitOpenError):
        await cb(ok)()


async def test_isolate_while_failed_open_reaches_redis_when_it_answers_again(
    redis_server: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Issue 14 item 23: isolate() during an outage acted on local state only and was silently undone
    # when Redis answered: calls reached the isolated dependency again, the other replica never saw it.
    clock = FakeClock()
    a = breaker(redis_server.url, sync_interval=0, clock=clock)
    b = breaker(redis_server.url, sync_interval=0)
    reached = 0

    async def dependency() -> str:
        nonlocal reached
        reached += 1
        return "ok"

    assert await a(dependency)() == "ok"
    caplog.set_level(logging.INFO, logger="resilient.redis")
    redis_server.kill()
    a.isolate()  # Redis is away: applied here, and said so
    assert a.state is CircuitState.ISOLATED
    assert not a.store.using_redis  # type: ignore[attr-defined]
    assert a.store.status()["manual_pending"] == "isolated"  # type: ignore[attr-defined]
    redis_server.restart()  # a new, empty Redis
    await until_recovered(a, clock, a(dependency))  # calls (rejected: isolated) start the probes
    assert a.state is CircuitState.ISOLATED  # not undone by Redis' state
    assert "manual_pending" not in a.store.status()  # type: ignore[attr-defined]
    for _ in range(25):
        with pytest.raises(CircuitOpenError, match="isolated"):
            await a(dependency)()
    assert reached == 1
    await b.store.arefresh()  # type: ignore[attr-defined]
    assert b.state is CircuitState.ISOLATED  # the other replica sees it
    with pytest.raises(CircuitOpenError, match="isolated"):
        await b(dependency)()
    a.reset()
    await b.store.arefresh()  # type: ignore[attr-defined]
    assert await b(dependency)() == "ok"
    # Loudly: the operator is told the transition is local until Redis answers, then that it got there.
    texts = [r.getMessage() for r in caplog.records if r.name == "resilient.redis"]
    assert any("isolate()" in t and "written to Redis when it answers again" in t for t in texts)
    assert any("isolate()" in t and "written to Redis" in t and "answers again" not in t for t in texts)


async def test_reset_while_failed_open_reaches_redis(redis_server: RedisServer) -> None:  # noqa: F811
    clock = FakeClock()
    a = breaker(redis_server.url, consecutive_failures=1, break_duration=30, clock=clock)
    b = breaker(redis_server.url, consecutive_failures=1, break_duration=30)
    await fail_n(a, 1)  # the shared circuit is open for 30 s
    admin = sync_redis.Redis.from_url(redis_server.url)
    admin.save()  # the restart below brings the open circuit back
    admin.close()
    redis_server.kill()
    a.reset()
    assert a.state is CircuitState.CLOSED
    assert not a.store.using_redis  # type: ignore[attr-defined]
    redis_server.restart()
    await until_recovered(a, clock, a(ok))  # calls (locally closed) start the probe, which writes the reset
    assert a.state is CircuitState.CLOSED
    assert await b(ok)() == "ok"  # b's first call asks Redis: closed


async def test_a_manual_trip_overtaken_locally_is_not_written(redis_server: RedisServer) -> None:  # noqa: F811
    # trip() opens for one break; if the local circuit has moved on by itself before Redis answers
    # (the break ended, a probe closed it), Redis' state stands.
    clock = FakeClock()
    a = breaker(redis_server.url, break_duration=5, sync_interval=0, clock=clock)
    b = breaker(redis_server.url, break_duration=5, sync_interval=0)
    assert await a(ok)() == "ok"
    redis_server.kill()
    a.trip()
    assert a.state is CircuitState.OPEN
    clock.advance(5.0)  # the break is over; Redis is still away
    assert await a(ok)() == "ok"  # the local probe succeeds and closes the local circuit
    assert a.state is CircuitState.CLOSED
    await eventually(lambda: a.store._failopen._probe_task.done())  # type: ignore[attr-defined]
    redis_server.restart()  # a new, empty Redis: had the trip been written, it would be open
    await until_recovered(a, clock, a(ok))
    assert a.state is CircuitState.CLOSED
    assert await b(ok)() == "ok"


# -- the window's running totals ----------------------------------------------------


async def test_shared_ratio_window_stays_exact_across_bucket_rolls(redis_server: RedisServer) -> None:  # noqa: F811
    # Buckets of 0.2 s: the calls below cross several bucket starts, each of which recounts the window.
    clock = FakeClock()
    opts = {"failure_ratio": 1.0, "minimum_throughput": 10**6, "sampling_duration": 2, "clock": clock}
    good = breaker(redis_server.url, name="rolls", sync_interval=0, redis_time=False, **opts)
    bad = breaker(redis_server.url, name="rolls", redis_time=False, **opts)
    failures = 0
    for i in range(30):
        if i % 3:
            await good(ok)()
        else:
            await fail_n(bad, 1)
            failures += 1
        m = good.metrics
        assert (m.calls, m.failures) == (i + 1, failures)
        clock.advance(0.03)
    assert bad.state is CircuitState.CLOSED
    # One sampling duration later every bucket has left the window (the last, [0.8 s, 1 s), at
    # 2.8 s): nothing counted, and a new call starts from zero.
    clock.advance(2)
    assert good.metrics.calls == 0
    await fail_n(bad, 1)
    m = good.metrics
    assert (m.calls, m.failures) == (1, 1)


async def test_buckets_that_leave_the_window_are_subtracted(redis_server: RedisServer) -> None:  # noqa: F811
    clock = FakeClock()
    opts = {"failure_ratio": 0.5, "minimum_throughput": 4, "sampling_duration": 0.5, "clock": clock}
    good = breaker(redis_server.url, name="leave", sync_interval=0, redis_time=False, **opts)
    bad = breaker(redis_server.url, name="leave", redis_time=False, **opts)
    for _ in range(3):
        await fail_n(bad, 1)
        clock.advance(0.05)  # a new 50 ms bucket each time
    assert bad.state is CircuitState.CLOSED  # 3 calls < minimum_throughput
    clock.advance(0.5)  # one sampling duration: those three leave the window
    for _ in range(3):
        await good(ok)()
        clock.advance(0.05)
    await fail_n(bad, 1)  # 1/4: had the old failures stayed, 4/7 would open it
    assert bad.state is CircuitState.CLOSED
    m = good.metrics
    assert (m.calls, m.failures) == (4, 1)
    await fail_n(bad, 1)
    await fail_n(bad, 1)  # 3/6 in the window
    assert bad.state is CircuitState.OPEN


async def test_state_without_running_totals_is_recounted(
    redis_server: RedisServer,  # noqa: F811
    rclient: aioredis.Redis,
) -> None:
    # State written by an earlier version of the script has no running totals: the window is recounted.
    opts = {"failure_ratio": 1.0, "minimum_throughput": 10**6, "sampling_duration": 10}
    cb = breaker(redis_server.url, name="upgrade", sync_interval=0, **opts)
    await fail_n(cb, 2)
    await cb(ok)()
    await rclient.hdel(cb.store.keys[0], "wi", "wc", "wf")  # type: ignore[attr-defined]
    await fail_n(cb, 1)
    m = cb.metrics
    assert (m.calls, m.failures) == (4, 3)


async def test_shadow_mode_on_a_shared_circuit(redis_server: RedisServer) -> None:  # noqa: F811
    # A replica rolling the breaker out in shadow mode reads the fleet's open circuit, lets its calls
    # through, and its outcomes (of calls an enforcing breaker would not have made) reach nobody.
    enforcing = breaker(redis_server.url, consecutive_failures=2, break_duration=30, sync_interval=0)
    shadow = breaker(redis_server.url, consecutive_failures=2, break_duration=30, sync_interval=0, enforce=False)
    assert await shadow(ok)() == "ok"  # closed: learns the shared state with this outcome
    await fail_n(enforcing, 2)
    assert enforcing.state is CircuitState.OPEN
    assert await shadow(ok)() == "ok"  # admitted before it heard; its outcome brings the news
    assert shadow.state is CircuitState.OPEN
    with recording() as rec:
        for _ in range(3):
            assert await shadow(ok)() == "ok"
        with pytest.raises(ConnectionError):
            await shadow(fail)()
    assert shadow.would_reject == 4
    assert [e.name for e in rec.events] == [events.WOULD_REJECT] * 4
    # Nothing the shadow let through moved the shared circuit.
    with pytest.raises(CircuitOpenError):
        await enforcing(ok)()
    assert enforcing.store.snapshot.epoch == shadow.store.snapshot.epoch
