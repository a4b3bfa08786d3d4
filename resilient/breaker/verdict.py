"""What the breaker's engine decides of an outcome, and the shadow-mode permit.

Shared by :class:`~resilient.CircuitBreaker` (the engine) and its shells
(``_shell_async.py`` and the files generated from it).
"""

from __future__ import annotations

import math
from typing import Final

from resilient.breaker.state import BreakerSnapshot, CircuitState

__all__ = ["DROPPED", "FAILURE", "NEITHER", "SHADOW", "SUCCESS"]

#: The outcome counts as a success.
SUCCESS: Final = 0
#: The outcome counts as a failure.
FAILURE: Final = 1
#: Counted as nothing: the permit is released (``ignore=``, a cancelled call).
NEITHER: Final = 2
#: A shadow-mode call the enforcing breaker would not have made: no store call at all.
DROPPED: Final = 3

#: Shadow mode: the permit of a call the breaker would have rejected and lets
#: through. Its epoch is never current, and the breaker drops its outcome
#: before any store sees it: the enforcing breaker would not have run the
#: call, so its outcome must not move the circuit.
SHADOW: Final = BreakerSnapshot(CircuitState.OPEN, -1, -math.inf)
