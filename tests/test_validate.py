"""The shared validators: one error type per kind of mistake, messages naming the parameter."""

from __future__ import annotations

import math

import pytest

from resilient import SYSTEM_CLOCK
from resilient.testing import FakeClock
from resilient.validate import (
    check_bool,
    check_callable,
    check_clock,
    check_fraction,
    check_int,
    check_number,
    check_seconds,
    check_switch,
)


@pytest.mark.parametrize("bad", ["1", None, True, [1]])
def test_wrong_types_are_type_errors_naming_the_parameter(bad: object) -> None:
    with pytest.raises(TypeError, match=r"^rate must be a finite number > 0, got "):
        check_number(bad, "rate")


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, -math.inf])
def test_out_of_range_values_are_value_errors(bad: float) -> None:
    with pytest.raises(ValueError, match=r"^rate must be a finite number > 0, got "):
        check_number(bad, "rate")


def test_number_options() -> None:
    assert check_number(0, "x", strict=False) == 0.0
    assert check_number(2, "x", maximum=2) == 2.0
    with pytest.raises(ValueError, match=r"x must be a finite number in \(0, 2\], got 3"):
        check_number(3, "x", maximum=2)
    assert check_number(math.inf, "x", allow_inf=True) == math.inf
    with pytest.raises(ValueError, match=r"math.inf allowed"):
        check_number(-1, "x", allow_inf=True)
    assert check_number(None, "x", allow_none=True) is None
    with pytest.raises(TypeError, match="or None"):
        check_number("a", "x", allow_none=True)


def test_seconds() -> None:
    assert check_seconds(1, "timeout") == 1.0
    assert check_seconds(0, "delay", allow_zero=True) == 0.0
    assert check_seconds(None, "t", allow_none=True) is None
    with pytest.raises(ValueError, match=r"^timeout must be a finite number of seconds > 0, got 0$"):
        check_seconds(0, "timeout")
    with pytest.raises(TypeError, match="timeout must be a finite number of seconds"):
        check_seconds("1s", "timeout")


def test_fraction() -> None:
    assert check_fraction(1, "ratio") == 1.0
    assert check_fraction(0, "ratio", allow_zero=True) == 0.0
    with pytest.raises(ValueError, match=r"ratio must be a finite number in \(0, 1\]"):
        check_fraction(0, "ratio")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        check_fraction(1.5, "ratio", allow_zero=True)


def test_int() -> None:
    assert check_int(3, "attempts") == 3
    assert check_int(None, "n", allow_none=True) is None
    with pytest.raises(ValueError, match=r"^attempts must be an int >= 1, got 0$"):
        check_int(0, "attempts")
    with pytest.raises(TypeError, match=r"^attempts must be an int >= 1, got 3.0$"):
        check_int(3.0, "attempts")
    with pytest.raises(TypeError, match="attempts"):
        check_int(True, "attempts")
    with pytest.raises(ValueError, match=r"an int in \[1, 5\]"):
        check_int(6, "n", maximum=5)


def test_bool_switch_callable_clock() -> None:
    assert check_bool(False, "enabled") is False
    with pytest.raises(TypeError, match="enabled must be a bool"):
        check_bool("no", "enabled")
    flag = check_switch(lambda: True, "enforce")
    assert callable(flag)
    assert check_switch(True, "enforce") is True
    with pytest.raises(TypeError, match="enforce must be a bool or a callable"):
        check_switch("yes", "enforce")
    with pytest.raises(TypeError, match="on_result must be a predicate"):
        check_callable(int, "on_result", "a predicate")
    assert check_callable(int, "factory", allow_class=True) is int
    assert check_callable(None, "hook", allow_none=True) is None
    assert check_clock(None) is SYSTEM_CLOCK
    clock = FakeClock()
    assert check_clock(clock) is clock
    with pytest.raises(TypeError, match="clock must be a Clock"):
        check_clock(object())


def test_a_whole_bound_reads_as_written() -> None:
    with pytest.raises(ValueError, match=r"idle_ttl must be a finite number of seconds in \[1, 2592000\], got 0.5"):
        check_number(0.5, "idle_ttl", minimum=1, strict=False, maximum=2592000, unit="seconds")


@pytest.mark.parametrize(
    ("store", "option"),
    [
        ("RedisRateStore", "timeout"),
        ("RedisRateStore", "recovery_interval"),
        ("RedisCacheStore", "timeout"),
        ("RedisBreakerStore", "sync_interval"),
        ("RedisBreakerStore", "idle_ttl"),
    ],
)
def test_the_redis_stores_refuse_a_wrong_type_with_typeerror_and_a_bad_value_with_valueerror(
    store: str, option: str
) -> None:
    # They raised ValueError for both, unlike every other constructor (issue 15, point 8).
    redis = pytest.importorskip("resilient.redis")
    cls = getattr(redis, store)
    url = "redis://127.0.0.1:1"  # never connected: construction alone is checked
    with pytest.raises(TypeError, match=rf"{option} must be a finite number of seconds in "):
        cls(url, **{option: "1"})
    with pytest.raises(ValueError, match=rf"{option} must be a finite number of seconds in .*got -1"):
        cls(url, **{option: -1})
