"""Deprecated module path: the bulkhead lives in :mod:`resilient.concurrency` now.

``from resilient.bulkhead import Bulkhead`` keeps working; import it from
``resilient`` or :mod:`resilient.concurrency` instead.
"""

from __future__ import annotations

import warnings

from resilient.concurrency.bulkhead import Bulkhead

__all__ = ["Bulkhead"]

warnings.warn(
    "resilient.bulkhead is a deprecated module path: import from resilient (or resilient.concurrency)",
    DeprecationWarning,
    stacklevel=2,
)
