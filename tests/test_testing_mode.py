"""Test mode (set_testing) and the pytest plugin's fixtures, as a user's test suite sees them."""

from __future__ import annotations

import asyncio

import pytest

from resilient import Retry, constant
from resilient.testing import TEST_MODE, FakeClock, set_testing


def failing_then(n: int) -> tuple[list[int], object]:
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= n:
            raise ConnectionError
        return "ok"

    return calls, fn


def test_test_mode_caps_attempts_and_removes_waits() -> None:
    clock = FakeClock()
    calls, fn = failing_then(10)
    guarded = Retry(5, backoff=constant(30), on=ConnectionError, clock=clock)(fn)  # type: ignore[arg-type]
    with set_testing(True), pytest.raises(ConnectionError) as info:
        guarded()
    assert len(calls) == 1
    assert clock.sleeps == []
    assert "test mode" in info.value.__notes__[0]
    assert TEST_MODE.active is False  # restored by the with block


def test_test_mode_with_more_attempts_never_waits() -> None:
    clock = FakeClock()
    calls, fn = failing_then(2)
    guarded = Retry(5, backoff=constant(30), on=ConnectionError, clock=clock)(fn)  # type: ignore[arg-type]
    set_testing(True, attempts=3)
    try:
        assert guarded() == "ok"
    finally:
        set_testing(False)
    assert len(calls) == 3
    assert clock.sleeps == []
    assert not TEST_MODE.active


async def test_test_mode_applies_to_async_retries() -> None:
    calls = 0

    @Retry(4, backoff=constant(60))
    async def flaky() -> str:
        nonlocal calls
        calls += 1
        raise ConnectionError

    with set_testing(True, attempts=2), pytest.raises(ConnectionError):
        await asyncio.wait_for(flaky(), 5)
    assert calls == 2


def test_test_mode_never_adds_attempts() -> None:
    calls, fn = failing_then(10)
    guarded = Retry(2, backoff=constant(0), on=ConnectionError)(fn)  # type: ignore[arg-type]
    with set_testing(True, attempts=5), pytest.raises(ConnectionError):
        guarded()
    assert len(calls) == 2


def test_set_testing_validates() -> None:
    with pytest.raises(TypeError, match="testing must be a bool"):
        set_testing("yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="attempts must be an int >= 1"):
        set_testing(True, attempts=0)
    assert not TEST_MODE.active


def test_the_pytest_plugin_offers_its_fixtures_to_a_users_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import asyncio
        import pytest
        from resilient import Retry, Timeout, constant
        from resilient.testing import TEST_MODE

        def test_fake_clock(fake_clock):
            fake_clock.advance(5)
            assert fake_clock.now() == 5

        def test_testing_mode(resilient_testing):
            calls = []

            @Retry(5, backoff=constant(30))
            def flaky():
                calls.append(1)
                raise ConnectionError

            with pytest.raises(ConnectionError):
                flaky()
            assert calls == [1]
            assert resilient_testing.active

        @pytest.mark.parametrize("resilient_testing", [3], indirect=True)
        def test_more_attempts(resilient_testing):
            assert resilient_testing.attempts == 3

        def test_mode_is_restored_after_the_test():
            assert not TEST_MODE.active
        """
    )
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
