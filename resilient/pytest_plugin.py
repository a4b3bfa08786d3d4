"""The pytest plugin (registered through the ``pytest11`` entry point): fixtures for users' tests.

* ``fake_clock``: a fresh :class:`~resilient.testing.FakeClock` at t=0; pass
  it as ``clock=`` to the policies under test and move time with
  ``fake_clock.advance(...)``.
* ``resilient_testing``: test mode for one test (:func:`~resilient.testing.set_testing`):
  every :class:`~resilient.Retry` makes one attempt and never waits; the
  previous mode is restored afterwards. Use
  ``@pytest.mark.parametrize("resilient_testing", [3], indirect=True)`` for
  another number of attempts.

The plugin registers nothing else and imports only :mod:`resilient.testing`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from resilient.testing import FakeClock, TestMode, set_testing

__all__ = ["fake_clock", "resilient_testing"]


@pytest.fixture
def fake_clock() -> FakeClock:
    """A manual :class:`~resilient.testing.FakeClock` starting at 0."""
    return FakeClock()


@pytest.fixture
def resilient_testing(request: pytest.FixtureRequest) -> Iterator[TestMode]:
    """Test mode for the test: retries make ``request.param`` attempts (default 1), without waiting."""
    attempts = getattr(request, "param", 1)
    with set_testing(True, attempts=attempts) as mode:
        yield mode
