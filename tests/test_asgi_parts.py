"""The ASGI parts as built from the core: events for every answer, shadow mode, keyed limiters, misconfigurations.

Raw ASGI calls on a FakeClock here; tests/test_asgi_server.py runs the same
behaviour under uvicorn.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import warnings
from collections.abc import Hashable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import resilient.asgi
from resilient.asgi import (
    DeadlinePropagation,
    KeyedLimiter,
    LoadShedding,
    RateLimit,
    RequestTimeout,
    ResilienceMiddleware,
)
from resilient.asgi._common import Message, Receive, Scope, Send
from resilient.concurrency import Bulkhead
from resilient.events import (
    EXTRA_DEADLINE,
    EXTRA_HTTP_STATUS,
    EXTRA_REASON,
    EXTRA_RETRY_AFTER,
    REJECTED,
    TIMEOUT,
    WOULD_REJECT,
    ResilienceEvent,
)
from resilient.ratelimit import KeyedRateLimiter, RateDecision
from resilient.testing import FakeClock, recording
from tests.asgi_helpers import body_of, call, headers_of, http_scope, status_of


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def ok_app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def gated(gate: asyncio.Event) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await gate.wait()
        await ok_app(scope, receive, send)

    return app


def asgi_events(events: list[ResilienceEvent]) -> list[tuple[str, str, Any, Any]]:
    """(name, policy type, status, reason) of the events the ASGI parts emitted."""
    return [
        (e.name, e.policy_type, e.extras.get(EXTRA_HTTP_STATUS), e.extras.get(EXTRA_REASON))
        for e in events
        if e.policy_type.startswith("asgi.")
    ]


# -- every 503 and 504 (and 429) emits an event --------------------------------------


async def test_the_immediate_503_of_the_combined_middleware_is_answered_and_reported() -> None:
    # max_queued=0: the admission that cannot wait (the branch that had no test).
    gate = asyncio.Event()
    mw = ResilienceMiddleware(gated(gate), max_concurrent=1, retry_after=2, name="imm")
    with recording() as rec:
        first = asyncio.create_task(call(mw, http_scope()))
        await settle()
        refused = await call(mw, http_scope())
    assert status_of(refused) == 503
    assert headers_of(refused)["retry-after"] == "2"
    assert json.loads(body_of(refused)) == {"error": "overloaded", "retry_after": 2}
    (event,) = [e for e in rec.events if e.policy_type == "asgi.load_shedding"]
    assert event.name == REJECTED
    assert event.policy == "imm.load_shedding"
    assert dict(event.extras) == {EXTRA_REASON: "overloaded", EXTRA_RETRY_AFTER: 2.0, EXTRA_HTTP_STATUS: 503}
    # The bulkhead reports its own view of the same refusal.
    assert [e.extras[EXTRA_REASON] for e in rec.events if e.policy_type == "bulkhead"] == ["bulkhead_full"]
    gate.set()
    assert status_of(await first) == 200
    (shedding,) = [p for p in mw.parts if isinstance(p, LoadShedding)]
    bulkhead = shedding.limiter
    assert isinstance(bulkhead, Bulkhead)
    assert bulkhead.running == 0


async def test_a_request_timeout_504_is_reported() -> None:
    clock = FakeClock()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.Event().wait()

    mw = ResilienceMiddleware(slow, timeout=2, clock=clock, name="to")
    with recording() as rec:
        running = asyncio.create_task(call(mw, http_scope()))
        await settle()
        clock.advance(2)
        sent = await running
        # A caller's nearer deadline cut the limit: the event says so.
        running = asyncio.create_task(call(mw, http_scope(headers=[("x-resilient-deadline", "1")])))
        await settle()
        clock.advance(1)
        cut = await running
    assert status_of(sent) == status_of(cut) == 504
    assert json.loads(body_of(cut)) == {"error": "timeout", "timeout": 1.0}
    timeouts = [e for e in rec.events if e.policy_type == "asgi.request_timeout"]
    assert [(e.name, e.policy, e.duration, e.extras[EXTRA_DEADLINE]) for e in timeouts] == [
        (TIMEOUT, "to.request_timeout", 2.0, False),
        (TIMEOUT, "to.request_timeout", 1.0, True),
    ]
    assert {e.extras[EXTRA_HTTP_STATUS] for e in timeouts} == {504}


async def test_an_expired_deadline_504_is_reported_on_arrival_and_in_the_queue() -> None:
    clock = FakeClock()
    gate = asyncio.Event()
    mw = ResilienceMiddleware(gated(gate), max_concurrent=1, max_queued=1, clock=clock, name="dl")
    with recording() as rec:
        assert status_of(await call(mw, http_scope(headers=[("x-resilient-deadline", "0")]))) == 504
        first = asyncio.create_task(call(mw, http_scope()))
        await settle()
        queued = asyncio.create_task(call(mw, http_scope(headers=[("x-resilient-deadline", "2")])))
        await settle()
        clock.advance(2)
        assert status_of(await queued) == 504
    assert asgi_events(rec.events) == [
        (REJECTED, "asgi.deadline", 504, "deadline_exceeded"),
        (REJECTED, "asgi.load_shedding", 504, "deadline_exceeded"),
    ]
    gate.set()
    await first


async def test_a_429_is_reported() -> None:
    mw = RateLimit(ok_app, rate=1, per=60, name="rl", clock=FakeClock())
    with recording() as rec:
        assert [status_of(await call(mw, http_scope())) for _ in range(2)] == [200, 429]
    (event,) = [e for e in rec.events if e.policy_type == "asgi.rate_limit"]
    assert (event.name, event.policy, event.extras[EXTRA_HTTP_STATUS]) == (REJECTED, "rl", 429)
    assert event.extras[EXTRA_RETRY_AFTER] == pytest.approx(60)


# -- shadow mode -----------------------------------------------------------------------


async def test_shadow_rate_limit_decides_as_usual_and_lets_the_request_through() -> None:
    clock = FakeClock()
    enforce = [False]
    mw = RateLimit(ok_app, rate=2, per=1, clock=clock, enforce=lambda: enforce[0])
    limiter = mw.limiter
    assert isinstance(limiter, KeyedRateLimiter)
    with recording() as rec:
        codes = [status_of(await call(mw, http_scope())) for _ in range(4)]
    assert codes == [200] * 4
    would = [e for e in rec.events if e.name == WOULD_REJECT]
    assert [(e.policy_type, e.extras[EXTRA_HTTP_STATUS], e.extras[EXTRA_REASON]) for e in would] == [
        ("asgi.rate_limit", 429, "rate_limited")
    ] * 2
    assert not [e for e in rec.events if e.name == REJECTED and e.policy_type == "asgi.rate_limit"]
    # The decisions were the enforcing ones: the bucket is as empty as if refusing.
    assert limiter.rejected == 2
    assert mw.would_reject == 2
    enforce[0] = True  # switched on at run time
    assert status_of(await call(mw, http_scope())) == 429
    clock.advance(0.5)
    assert status_of(await call(mw, http_scope())) == 200


async def test_shadow_load_shedding_never_refuses_nor_holds_a_request_back() -> None:
    gate = asyncio.Event()
    mw = LoadShedding(gated(gate), max_concurrent=1, max_queued=1, enforce=False)
    bulkhead = mw.limiter
    assert isinstance(bulkhead, Bulkhead)
    with recording() as rec:
        tasks = [asyncio.create_task(call(mw, http_scope())) for _ in range(4)]
        await settle()
        # One holds the slot; the second runs as if queued; the third and fourth would be refused.
        assert bulkhead.running == 1
        assert bulkhead.queued == 0
        assert not any(t.done() for t in tasks)
        gate.set()
        assert [status_of(await t) for t in tasks] == [200] * 4
    assert asgi_events(rec.events) == [(WOULD_REJECT, "asgi.load_shedding", 503, "overloaded")] * 2
    assert mw.would_reject == 2
    assert bulkhead.running == 0
    assert bulkhead.rejected == 0
    gate.clear()
    first = asyncio.create_task(call(mw, http_scope()))
    await settle()
    assert bulkhead.running == 1  # the shadow count went back with the requests
    gate.set()
    assert status_of(await first) == 200


async def test_shadow_mode_with_a_foreign_limiter_lets_its_refusal_through() -> None:
    gate = asyncio.Event()
    shared = Bulkhead(1, name=None)

    class Wrapped:
        def acquire(self) -> Any:
            return shared.acquire()

    mw = LoadShedding(gated(gate), limiter=Wrapped(), enforce=False)
    with recording() as rec:
        tasks = [asyncio.create_task(call(mw, http_scope())) for _ in range(2)]
        await settle()
        gate.set()
        assert [status_of(await t) for t in tasks] == [200, 200]
    assert asgi_events(rec.events) == [(WOULD_REJECT, "asgi.load_shedding", 503, "overloaded")]


async def test_the_combined_middleware_passes_enforce_to_both_limits() -> None:
    gate = asyncio.Event()
    gate.set()
    mw = ResilienceMiddleware(gated(gate), rate=1, per=60, max_concurrent=4, enforce=False, name="shadow")
    assert [status_of(await call(mw, http_scope())) for _ in range(3)] == [200] * 3
    assert all(p.enforce is False for p in mw.parts if isinstance(p, RateLimit | LoadShedding))


def test_enforce_must_be_a_bool_or_a_callable() -> None:
    with pytest.raises(TypeError, match="enforce"):
        RateLimit(ok_app, rate=1, enforce="no")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="enforce"):
        LoadShedding(ok_app, max_concurrent=1, enforce=0)  # type: ignore[arg-type]


async def test_a_raising_enforce_switch_keeps_the_limit_on() -> None:
    def broken() -> bool:
        raise RuntimeError("flag service down")

    mw = RateLimit(ok_app, rate=1, per=60, enforce=broken)
    assert [status_of(await call(mw, http_scope())) for _ in range(2)] == [200, 429]


# -- RateLimit(limiter=): any keyed limiter ----------------------------------------------


async def test_rate_limit_over_a_given_keyed_limiter_shares_its_buckets() -> None:
    # Two apps (two replicas) over one keyed limiter: one quota between them.
    clock = FakeClock()
    shared = KeyedRateLimiter(3, 60, mode="reject", clock=clock)
    a = RateLimit(ok_app, limiter=shared, headers_on_success=True)
    b = ResilienceMiddleware(ok_app, rate_limiter=shared)
    codes = [status_of(await call(app, http_scope())) for app in (a, b, a, b, a)]
    assert codes == [200, 200, 200, 429, 429]
    assert headers_of(await call(a, http_scope(client=("10.0.0.9", 1))))["ratelimit-policy"] == '"default";q=3;w=60'


async def test_an_async_keyed_limiter_is_awaited() -> None:
    class AsyncLimiter:
        rate = 2.0
        per = 1.0

        def __init__(self) -> None:
            self.keys: list[Hashable] = []

        async def try_acquire(self, key: Hashable, tokens: int = 1) -> RateDecision:
            await asyncio.sleep(0)
            self.keys.append(key)
            allowed = len(self.keys) <= 2
            return RateDecision(allowed, 0.0 if allowed else 0.5, 2, max(0, 2 - len(self.keys)), 1.0)

    limiter = AsyncLimiter()
    assert isinstance(limiter, KeyedLimiter)
    mw = RateLimit(ok_app, limiter=limiter)
    sent = [await call(mw, http_scope(client=("192.0.2.1", 1))) for _ in range(3)]
    assert [status_of(s) for s in sent] == [200, 200, 429]
    assert headers_of(sent[2])["retry-after"] == "1"
    assert headers_of(sent[2])["ratelimit-policy"] == '"default";q=2;w=1'
    assert limiter.keys == ["192.0.2.1"] * 3


async def test_a_limiters_async_decision_is_preferred() -> None:
    # A keyed limiter over a remote store decides synchronously by blocking;
    # its atry_acquire does not block the event loop.
    class Both:
        rate = 1.0
        per = 60.0

        def __init__(self) -> None:
            self.calls: list[str] = []

        def try_acquire(self, key: Hashable, tokens: int = 1) -> RateDecision:
            self.calls.append("sync")
            return RateDecision(True, 0.0, 1, 0, 60.0)

        async def atry_acquire(self, key: Hashable, tokens: int = 1) -> RateDecision:
            self.calls.append("async")
            return RateDecision(False, 60.0, 1, 0, 60.0)

    limiter = Both()
    assert status_of(await call(RateLimit(ok_app, limiter=limiter), http_scope())) == 429
    assert limiter.calls == ["async"]


def test_rate_limit_needs_either_rate_or_a_limiter() -> None:
    shared = KeyedRateLimiter(3, 60)
    with pytest.raises(TypeError, match="rate"):
        RateLimit(ok_app)
    with pytest.raises(TypeError, match=r"limiter or rate, burst"):
        RateLimit(ok_app, limiter=shared, rate=5, burst=2)
    with pytest.raises(TypeError, match="try_acquire"):
        RateLimit(ok_app, limiter=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"limiter\.rate"):
        RateLimit(ok_app, limiter=type("NoRate", (), {"try_acquire": lambda self, key: None})())


# -- misconfigurations fail at construction, naming the parameters (issue 17, item 12) -----


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_queued": 5}, r"max_queued given without max_concurrent or limiter"),
        ({"queue_timeout": 1.0}, r"queue_timeout given without max_concurrent"),
        ({"trusted_proxies": ["10.0.0.0/8"]}, r"trusted_proxies given without rate or rate_limiter"),
        ({"trusted_proxies": ["10.0.0.0/33"]}, r"trusted_proxies given without rate"),
        ({"burst": 10, "per": 60}, r"per, burst given without rate"),
        ({"deadline_header": None, "max_deadline": 10}, r"max_deadline given without deadline_header"),
        ({"enforce": False}, r"enforce given without max_concurrent, limiter, rate or rate_limiter"),
    ],
)
def test_options_of_a_part_that_is_off_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        ResilienceMiddleware(ok_app, **kwargs)


def test_bulkhead_options_next_to_a_given_limiter_are_refused() -> None:
    shared = Bulkhead(2)
    with pytest.raises(TypeError, match="max_queued, queue_timeout given with limiter"):
        LoadShedding(ok_app, limiter=shared, max_queued=3, queue_timeout=1)
    with pytest.raises(TypeError, match="max_queued given with limiter"):
        ResilienceMiddleware(ok_app, limiter=shared, max_queued=3)
    ResilienceMiddleware(ok_app, limiter=shared, clock=FakeClock(), timeout=1)  # the clock goes to the timeout


def test_an_invalid_trusted_proxy_network_is_named() -> None:
    with pytest.raises(ValueError, match=r"trusted_proxies .*'10\.0\.0\.0/33'"):
        ResilienceMiddleware(ok_app, rate=5, trusted_proxies=["10.0.0.0/33"])


def test_part_option_errors_name_the_parameter() -> None:
    with pytest.raises(ValueError, match="seconds"):
        ResilienceMiddleware(ok_app, timeout=-1)
    with pytest.raises(ValueError, match="max_queued"):
        ResilienceMiddleware(ok_app, max_concurrent=2, max_queued=-1)
    with pytest.raises(ValueError, match="max"):
        ResilienceMiddleware(ok_app, max_deadline=0)
    with pytest.raises(TypeError, match="set_deadline"):
        RequestTimeout(ok_app, seconds=1, set_deadline="yes")  # type: ignore[arg-type]


# -- the composed middleware -------------------------------------------------------------


def test_the_combined_middleware_is_its_parts_each_wrapping_the_next() -> None:
    mw = ResilienceMiddleware(ok_app, rate=5, max_concurrent=2, timeout=3)
    parts: list[Any] = mw.parts
    assert mw.chain is parts[0]
    for outer, inner in itertools.pairwise(parts):
        assert outer.app is inner
    assert parts[-1].app is ok_app
    assert mw.app is ok_app
    assert ResilienceMiddleware(ok_app, deadline_header=None).chain is ok_app


# -- the renamed Deadline ----------------------------------------------------------------


def test_the_old_deadline_name_is_a_deprecated_alias() -> None:
    with pytest.warns(DeprecationWarning, match="DeadlinePropagation"):
        old = resilient.asgi.Deadline
    assert old is DeadlinePropagation
    with pytest.warns(DeprecationWarning, match="resilient.asgi.Deadline is deprecated"):
        from resilient.asgi import Deadline  # noqa: F401
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "Deadline" not in resilient.asgi.__all__
        assert resilient.asgi.DeadlinePropagation is DeadlinePropagation
    with pytest.raises(AttributeError):
        resilient.asgi.Nothing  # noqa: B018


async def test_a_message_sent_after_a_failing_send_still_lifts() -> None:
    # The response deadline is lifted even when the server's send raises (a
    # client gone mid-response): nothing of the request stays in force.
    clock = FakeClock()
    seen: list[float | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        from resilient.deadline import remaining

        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        except OSError:
            seen.append(remaining())
            raise

    async def broken_send(message: Message) -> None:
        raise OSError("gone")

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    mw = RequestTimeout(app, seconds=5, clock=clock)
    with pytest.raises(OSError, match="gone"):
        await mw(http_scope(), receive, broken_send)
    assert seen == [None]


# -- priority classes (issue 19, item 2) ------------------------------------------------


def by_header(scope: Scope) -> str:
    for k, v in scope["headers"]:
        if k == b"x-priority":
            return str(v.decode())
    return "default"


def with_priority(cls: str) -> Scope:
    return http_scope(headers=[("x-priority", cls)])


async def test_the_lowest_class_is_shed_first_and_critical_only_when_nothing_is_left() -> None:
    gate = asyncio.Event()
    mw = LoadShedding(gated(gate), max_concurrent=5, max_queued=1, priority=by_header)
    bulkhead = mw.limiter
    assert isinstance(bulkhead, Bulkhead)
    held = [asyncio.create_task(call(mw, with_priority("sheddable"))) for _ in range(3)]
    await settle()
    assert bulkhead.running == 3  # sheddable may use 5 - ceil(0.4 * 5) = 3 slots
    assert status_of(await call(mw, with_priority("sheddable"))) == 503
    held.append(asyncio.create_task(call(mw, with_priority("default"))))
    await settle()
    assert bulkhead.running == 4  # default may use 5 - ceil(0.2 * 5) = 4
    with recording() as rec:
        assert status_of(await call(mw, with_priority("default"))) == 503
    assert asgi_events(rec.events) == [(REJECTED, "asgi.load_shedding", 503, "overloaded")]
    held.append(asyncio.create_task(call(mw, with_priority("critical"))))
    await settle()
    assert bulkhead.running == 5
    held.append(asyncio.create_task(call(mw, with_priority("critical"))))  # waits for a slot
    await settle()
    assert bulkhead.queued == 1
    assert status_of(await call(mw, with_priority("critical"))) == 503  # nothing left
    gate.set()
    assert [status_of(await t) for t in held] == [200] * 6


async def test_a_failing_priority_function_puts_the_request_in_default_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = asyncio.Event()

    def broken(scope: Scope) -> str:
        if scope["path"] == "/odd":
            return "vip"
        raise RuntimeError("no tenant")

    mw = LoadShedding(gated(gate), max_concurrent=5, priority=broken)
    held = [asyncio.create_task(call(mw, http_scope())) for _ in range(5)]
    await settle()
    bulkhead = mw.limiter
    assert isinstance(bulkhead, Bulkhead)
    assert bulkhead.running == 4  # default's share: the fifth was shed
    assert status_of(await call(mw, http_scope("/odd"))) == 503
    gate.set()
    codes = [status_of(await t) for t in held]
    assert sorted(c or 0 for c in codes) == [200] * 4 + [503]
    warnings_logged = [r for r in caplog.records if r.name == "resilient.asgi"]
    assert len(warnings_logged) == 1
    assert "no tenant" in warnings_logged[0].getMessage()


async def test_shadow_mode_reports_a_class_over_its_share() -> None:
    gate = asyncio.Event()
    mw = LoadShedding(gated(gate), max_concurrent=2, priority=by_header, enforce=False)
    with recording() as rec:
        tasks = [asyncio.create_task(call(mw, with_priority("sheddable"))) for _ in range(2)]
        await settle()
        gate.set()
        assert [status_of(await t) for t in tasks] == [200, 200]
    # 2 - ceil(0.4 * 2) = 1 slot for sheddable: the second would have been shed.
    assert asgi_events(rec.events) == [(WOULD_REJECT, "asgi.load_shedding", 503, "overloaded")]


def test_priority_configuration_errors() -> None:
    with pytest.raises(TypeError, match="reserved given without priority"):
        LoadShedding(ok_app, max_concurrent=2, reserved={"critical": 0.5})
    with pytest.raises(ValueError, match="sum to less than 1"):
        LoadShedding(ok_app, max_concurrent=2, priority=by_header, reserved={"critical": 0.5, "default": 0.5})
    with pytest.raises(ValueError, match=r"reserved\['critical'\]"):
        LoadShedding(ok_app, max_concurrent=2, priority=by_header, reserved={"critical": 1.5})
    with pytest.raises(ValueError, match="'vip'"):
        LoadShedding(ok_app, max_concurrent=2, priority=by_header, reserved={"vip": 0.5})
    with pytest.raises(TypeError, match="priority"):
        LoadShedding(ok_app, max_concurrent=2, priority="header")  # type: ignore[arg-type]

    class Foreign:
        def acquire(self) -> Any:
            raise NotImplementedError

    with pytest.raises(TypeError, match="priority needs"):
        LoadShedding(ok_app, limiter=Foreign(), priority=by_header)
    with pytest.raises(TypeError, match="priority given without max_concurrent"):
        ResilienceMiddleware(ok_app, priority=by_header)
    mw = ResilienceMiddleware(ok_app, max_concurrent=4, priority=by_header, reserved={"critical": 0.5})
    (shedding,) = [p for p in mw.parts if isinstance(p, LoadShedding)]
    assert shedding.reserved == {"critical": 0.5}


def test_the_asgi_namespace_is_sorted() -> None:
    assert list(resilient.asgi.__all__) == sorted(resilient.asgi.__all__)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("request"), st.sampled_from(["192.0.2.1", "192.0.2.2", "192.0.2.3"])),
            st.tuples(st.just("wait"), st.floats(min_value=0.0, max_value=2.0)),
        ),
        max_size=40,
    )
)
def test_shadow_mode_decides_exactly_as_enforcing_and_never_changes_the_answer(steps: list[tuple[str, Any]]) -> None:
    # Two edges fed the same traffic: one enforcing, one in shadow mode. The
    # shadow one answers 200 where the other answers 429, and says so with a
    # would_reject event for exactly those requests.
    async def run() -> None:
        clocks = FakeClock(), FakeClock()
        enforcing = RateLimit(ok_app, rate=2, per=1, burst=3, clock=clocks[0], name="on")
        shadow = RateLimit(ok_app, rate=2, per=1, burst=3, clock=clocks[1], name="shadow", enforce=False)
        with recording() as rec:
            for i, (kind, arg) in enumerate(steps):
                if kind == "wait":
                    for clock in clocks:
                        clock.advance(arg)
                    continue
                scope = http_scope(client=(arg, 1000 + i))
                refused = status_of(await call(enforcing, scope)) == 429
                before = shadow.would_reject
                assert status_of(await call(shadow, dict(scope))) == 200
                assert shadow.would_reject - before == refused
                would = [e for e in rec.events if e.policy == "shadow" and e.name == WOULD_REJECT]
                assert len(would) == shadow.would_reject
        assert shadow.would_reject == sum(
            1 for e in rec.events if e.policy == "on" and e.name == REJECTED and e.policy_type == "asgi.rate_limit"
        )

    asyncio.run(run())
