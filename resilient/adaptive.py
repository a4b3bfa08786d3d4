"""Deprecated module path: its two policies moved.

:class:`~resilient.concurrency.AdaptiveConcurrency` lives in
:mod:`resilient.concurrency`, :class:`~resilient.throttle.AdaptiveThrottle` in
:mod:`resilient.throttle`. ``from resilient.adaptive import ...`` keeps
working; import them from ``resilient`` instead.
"""

from __future__ import annotations

import warnings

from resilient.concurrency.adaptive import AdaptiveConcurrency
from resilient.throttle import AdaptiveThrottle

__all__ = ["AdaptiveConcurrency", "AdaptiveThrottle"]

warnings.warn(
    "resilient.adaptive is a deprecated module path: import from resilient.concurrency or resilient.throttle",
    DeprecationWarning,
    stacklevel=2,
)
