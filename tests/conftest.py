"""Shared fixtures."""

from __future__ import annotations

import pytest

from resilient.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    """A manual fake clock at t=0."""
    return FakeClock()


@pytest.fixture
def auto_clock() -> FakeClock:
    """A fake clock whose sleeps advance time by themselves."""
    return FakeClock(auto_advance=True)
