"""Backoff strategies: values, caps, jitter bounds, determinism, validation."""

from __future__ import annotations

import itertools
import math
import random
import statistics
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilient import constant, exponential, linear


def take(backoff: Any, n: int) -> list[float]:
    return list(itertools.islice(backoff.delays(), n))


def test_constant() -> None:
    assert take(constant(0.5), 4) == [0.5] * 4
    assert constant(0.5)(7) == 0.5


def test_linear_defaults_step_to_start_and_caps() -> None:
    assert take(linear(1), 4) == [1, 2, 3, 4]
    assert take(linear(1, step=0.5, max_delay=2), 5) == [1, 1.5, 2, 2, 2]
    assert linear(1, step=2)(3) == 5


def test_exponential_without_jitter() -> None:
    assert take(exponential(0.1, jitter=None), 4) == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert take(exponential(1, factor=3, jitter=None, max_delay=10), 4) == [1, 3, 9, 10]
    assert exponential(0.1, jitter=None)(3) == pytest.approx(0.4)


def test_exponential_huge_retry_numbers_do_not_overflow() -> None:
    assert exponential(1, jitter=None, max_delay=60)(5000) == 60
    assert exponential(1, jitter="full", max_delay=60, random=lambda: 0.5)(5000) == 30


@given(st.integers(min_value=1, max_value=60), st.floats(min_value=0, max_value=0.999999))
def test_full_and_equal_jitter_bounds(retry: int, r: float) -> None:
    ceiling = exponential(0.1, jitter=None, max_delay=30)(retry)
    full = exponential(0.1, jitter="full", max_delay=30, random=lambda: r)(retry)
    equal = exponential(0.1, jitter="equal", max_delay=30, random=lambda: r)(retry)
    assert 0 <= full <= ceiling
    assert ceiling / 2 <= equal <= ceiling


def test_seeded_random_is_deterministic() -> None:
    a = take(exponential(0.2, jitter="decorrelated", random=random.Random(7).random), 10)
    b = take(exponential(0.2, jitter="decorrelated", random=random.Random(7).random), 10)
    assert a == b
    c = take(exponential(0.2, jitter="full", random=random.Random(7).random), 10)
    d = take(exponential(0.2, jitter="full", random=random.Random(7).random), 10)
    assert c == d


def test_decorrelated_jitter_is_capped_non_negative_and_fresh_per_iterator() -> None:
    rnd = random.Random(1)
    backoff = exponential(1, jitter="decorrelated", max_delay=8, random=rnd.random)
    for _ in range(200):
        delays = take(backoff, 30)
        assert all(0 <= d <= 8 for d in delays)
        assert all(math.isfinite(d) for d in delays)


def test_decorrelated_jitter_mean_grows_monotonically_and_medians_follow_base() -> None:
    # Polly's V2 formula: medians near base, base, 2*base, 4*base...; mean monotone; no clumping near 0.
    rnd = random.Random(42)
    backoff = exponential(1.0, jitter="decorrelated", max_delay=1e9, random=rnd.random)
    runs = [take(backoff, 6) for _ in range(4000)]
    columns = list(zip(*runs, strict=True))
    means = [statistics.fmean(c) for c in columns]
    assert all(b > a for a, b in itertools.pairwise(means[1:])), means
    medians = [statistics.median(c) for c in columns]
    # Retry 1 and 2 both have medians near base; then base*2, base*4...
    for n, median in enumerate(medians[1:], start=1):
        assert 0.75 * 2 ** (n - 1) <= median <= 1.33 * 2 ** (n - 1), (n, medians)
    first = columns[0]
    # Few first delays near zero (full jitter would put 10 % below 0.1 * base).
    assert sum(1 for d in first if d < 0.1) / len(first) < 0.05


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: constant(-1), r"^delay must be a finite number of seconds >= 0, got -1$"),
        (lambda: constant(math.nan), "delay must be a finite"),
        (lambda: constant(math.inf), "delay must be a finite"),
        (lambda: constant("1"), r"^delay must be a finite number of seconds >= 0, got '1'$"),
        (lambda: linear(-1), "start"),
        (lambda: linear(1, step=-1), "step"),
        (lambda: linear(1, max_delay=math.nan), "max_delay"),
        (lambda: exponential(-0.1), "base"),
        (lambda: exponential(0.1, factor=0.5), r"^factor must be a finite number >= 1, got 0.5$"),
        (lambda: exponential(0.1, factor=math.inf), "factor"),
        (lambda: exponential(0.1, max_delay=-1), "max_delay"),
        (lambda: exponential(0.1, jitter="fancy"), "jitter must be one of"),
        (lambda: exponential(0.1, random=3), r"^random must be a callable returning floats in \[0, 1\) or None, got 3"),
    ],
)
def test_bad_values_fail_at_construction(factory: Any, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        factory()


def test_retry_numbers_start_at_one() -> None:
    with pytest.raises(ValueError, match="retry must be >= 1"):
        exponential(jitter="decorrelated")(0)


def test_reprs() -> None:
    assert repr(constant(1)) == "constant(1.0)"
    assert "jitter='full'" in repr(exponential())


# -- decorrelated jitter and factor (issue 14, item 19) ----------------------


@pytest.mark.parametrize("factor", [1, 1.5, 3, 10.0])
def test_decorrelated_jitter_refuses_a_factor_it_would_ignore(factor: float) -> None:
    with pytest.raises(ValueError, match=r"factor.*jitter='decorrelated'") as info:
        exponential(0.1, factor=factor, jitter="decorrelated")
    assert repr(factor) in str(info.value)


@pytest.mark.parametrize("factor", [2, 2.0])
def test_decorrelated_jitter_accepts_its_own_factor(factor: float) -> None:
    backoff = exponential(0.1, factor=factor, jitter="decorrelated", random=random.Random(1).random)
    assert backoff(1) > 0


@pytest.mark.parametrize(
    ("factory", "param"),
    [
        (lambda: constant("1"), "delay"),
        (lambda: exponential(0.1, factor="2"), "factor"),
        (lambda: linear([1]), "start"),
    ],
)
def test_a_value_of_the_wrong_type_is_a_type_error_like_everywhere_else(factory: Any, param: str) -> None:
    """One error type per kind of mistake (resilient.validate): a wrong type is a TypeError."""
    with pytest.raises(TypeError, match=f"^{param} must be a finite number"):
        factory()
