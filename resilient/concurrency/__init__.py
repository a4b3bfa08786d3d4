"""Concurrency limits: a fixed one (:class:`Bulkhead`) and one that adapts (:class:`AdaptiveConcurrency`).

* :mod:`resilient.concurrency.bulkhead`: the bulkhead, its admission engine
  and the public steps (:meth:`Bulkhead.enter`, :meth:`Bulkhead.leave`,
  :meth:`Bulkhead.resize`) that a policy built on it uses;
* :mod:`resilient.concurrency.adaptive`: :class:`AdaptiveConcurrency`;
* :mod:`resilient.concurrency.limits`: its limit algorithms
  (:class:`Gradient2`, the default, and :class:`AIMD`) and their protocol,
  :class:`LimitAlgorithm`.
"""

from __future__ import annotations

from resilient.concurrency.adaptive import AdaptiveConcurrency
from resilient.concurrency.bulkhead import Admission, Bulkhead
from resilient.concurrency.limits import AIMD, Gradient2, LimitAlgorithm

__all__ = ["AIMD", "AdaptiveConcurrency", "Admission", "Bulkhead", "Gradient2", "LimitAlgorithm"]
