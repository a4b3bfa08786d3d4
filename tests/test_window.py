"""The sliding window of the retry budget and the adaptive throttle, against a brute-force model.

The model keeps every count with its time and sums those whose bucket is
among the last ``BUCKETS`` (``BUCKETS + 1`` for a lagging count), buckets
being numbered ``floor((t - origin) / tick)`` as the window numbers them.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from resilient.window import BUCKETS, PairWindow

steps = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=400).map(lambda n: n / 64),  # seconds since the last step
        st.integers(min_value=0, max_value=3),
        st.integers(min_value=0, max_value=3),
    ),
    max_size=60,
)


@given(
    # Ticks, gaps and origins that binary floats hold exactly: the model's arithmetic is exact too.
    window=st.sampled_from([0.625, 1.25, 5.0, 20.0]),
    origin=st.integers(min_value=0, max_value=10**6).map(float),
    lag=st.booleans(),
    steps=steps,
)
def test_the_totals_are_the_counts_of_the_buckets_in_the_window(
    window: float, origin: float, lag: bool, steps: list[tuple[float, int, int]]
) -> None:
    w = PairWindow(window, origin, lag=lag)
    tick = window / BUCKETS
    now = origin
    seen: list[tuple[int, int, int]] = []  # (bucket the count landed in, first, second)
    for gap, first, second in steps:
        now += gap
        current = int((now - origin) // tick)
        if first == 1 and second == 0:  # the budget's per-call step: advances by itself
            w.count_first(now)
        else:
            if now >= w.tick_end:
                w.advance(now)
            w.add(first, second)
        seen.append((current, first, second))
        assert w.first == sum(f for b, f, _ in seen if b > current - BUCKETS)
        assert w.second == sum(s for b, _, s in seen if b > current - BUCKETS - lag)
        # The next edge is the current bucket's end, on the grid of the origin (no drift).
        assert w.tick_end == origin + (current + 1) * tick


def test_a_count_older_than_the_window_is_gone_and_a_lagging_one_a_bucket_later() -> None:
    w = PairWindow(10.0, 0.0, lag=True)
    w.add(1, 1)
    w.advance(10.0)  # bucket 10: bucket 0 has left the first count's window
    assert (w.first, w.second) == (0, 1)
    w.advance(11.0)
    assert (w.first, w.second) == (0, 0)


def test_a_long_quiet_spell_empties_both_counts() -> None:
    w = PairWindow(1.0, 5.0)
    w.add(3, 2)
    w.advance(500.0)
    assert (w.first, w.second) == (0, 0)
    w.add(1, 0)
    assert w.first == 1
