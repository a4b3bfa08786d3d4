"""The one set of option validators every policy and integration uses.

One rule for every constructor in the library: a value of the wrong *type*
raises :class:`TypeError`, a value of the right type outside the allowed
*range* (NaN included) raises :class:`ValueError`, and both messages read
``"<param> must be <what is allowed>, got <value>"``, so the mistake and
its fix are in one line::

    >>> Retry(attempts=0)
    ValueError: attempts must be an int >= 1, got 0

Writing a policy of your own? Use these too: your users get the same
messages as from the built-in ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, overload

from resilient.clock import SYSTEM_CLOCK, Clock

__all__ = [
    "check_bool",
    "check_callable",
    "check_clock",
    "check_fraction",
    "check_int",
    "check_number",
    "check_seconds",
    "check_switch",
    "read_switch",
]


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


@overload
def check_number(
    value: Any,
    param: str,
    *,
    minimum: float = ...,
    strict: bool = ...,
    maximum: float | None = ...,
    allow_inf: bool = ...,
    unit: str = ...,
    allow_none: Literal[False] = ...,
) -> float: ...
@overload
def check_number(
    value: Any,
    param: str,
    *,
    allow_none: Literal[True],
    minimum: float = ...,
    strict: bool = ...,
    maximum: float | None = ...,
    allow_inf: bool = ...,
    unit: str = ...,
) -> float | None: ...
def check_number(
    value: Any,
    param: str,
    *,
    minimum: float = 0.0,
    strict: bool = True,
    maximum: float | None = None,
    allow_inf: bool = False,
    unit: str = "",
    allow_none: bool = False,
) -> float | None:
    """A finite number above ``minimum`` (``> minimum`` when ``strict``, else ``>=``), as a float.

    ``maximum`` is an inclusive upper bound; ``allow_inf`` admits
    ``math.inf``; ``unit`` (``"seconds"``) goes into the message;
    ``allow_none`` lets ``None`` through (returned as is).

    Raises:
        TypeError: not an int or float (a bool is not a number here).
        ValueError: NaN, infinite (unless allowed) or out of range.
    """
    if value is None and allow_none:
        return None
    what = _describe(minimum, strict, maximum, allow_inf, unit, allow_none)
    if not _is_number(value):
        raise TypeError(f"{param} must be {what}, got {value!r}")
    if (
        math.isnan(value)
        or (math.isinf(value) and not (allow_inf and value > 0))
        or (value <= minimum if strict else value < minimum)
        or (maximum is not None and value > maximum)
    ):
        raise ValueError(f"{param} must be {what}, got {value!r}")
    return float(value)


def _bound(x: float) -> str:
    # A whole bound reads as written (2592000, not 2.592e+06); others as %g.
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def _describe(minimum: float, strict: bool, maximum: float | None, allow_inf: bool, unit: str, allow_none: bool) -> str:
    kind = "a number" if allow_inf else "a finite number"
    if unit:
        kind += f" of {unit}"
    if maximum is not None:
        low = "(" if strict else "["
        what = f"{kind} in {low}{_bound(minimum)}, {_bound(maximum)}]"
    else:
        what = f"{kind} {'>' if strict else '>='} {_bound(minimum)}"
    if allow_inf:
        what += " (math.inf allowed)"
    if allow_none:
        what += " or None"
    return what


@overload
def check_seconds(
    value: Any, param: str, *, allow_zero: bool = ..., allow_inf: bool = ..., allow_none: Literal[False] = ...
) -> float: ...
@overload
def check_seconds(
    value: Any, param: str, *, allow_zero: bool = ..., allow_inf: bool = ..., allow_none: Literal[True]
) -> float | None: ...
def check_seconds(
    value: Any, param: str, *, allow_zero: bool = False, allow_inf: bool = False, allow_none: bool = False
) -> float | None:
    """A duration in seconds: finite and > 0 (>= 0 with ``allow_zero``), as a float (or ``None``)."""
    if value is None and allow_none:
        return None
    return check_number(value, param, minimum=0.0, strict=not allow_zero, allow_inf=allow_inf, unit="seconds")


def check_fraction(value: Any, param: str, *, allow_zero: bool = False) -> float:
    """A number in (0, 1] (or [0, 1] with ``allow_zero``), as a float."""
    return check_number(value, param, minimum=0.0, strict=not allow_zero, maximum=1.0)


@overload
def check_int(
    value: Any, param: str, *, minimum: int = ..., maximum: int | None = ..., allow_none: Literal[False] = ...
) -> int: ...
@overload
def check_int(
    value: Any, param: str, *, minimum: int = ..., maximum: int | None = ..., allow_none: Literal[True]
) -> int | None: ...
def check_int(
    value: Any, param: str, *, minimum: int = 1, maximum: int | None = None, allow_none: bool = False
) -> int | None:
    """An int ``>= minimum`` (and ``<= maximum``), or ``None`` when allowed.

    Raises:
        TypeError: not an int (a bool, a float such as ``3.0``...).
        ValueError: out of range.
    """
    if value is None and allow_none:
        return None
    what = f"an int >= {minimum}" if maximum is None else f"an int in [{minimum}, {maximum}]"
    if allow_none:
        what += " or None"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{param} must be {what}, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{param} must be {what}, got {value!r}")
    return value


def check_bool(value: Any, param: str) -> bool:
    """``True`` or ``False`` (not merely truthy: ``"no"`` is a mistake, not a yes)."""
    if not isinstance(value, bool):
        raise TypeError(f"{param} must be a bool, got {value!r}")
    return value


def check_switch(value: Any, param: str) -> bool | Callable[[], bool]:
    """A bool, or a callable returning one that is read at call time (``enabled=``, ``enforce=``)."""
    if isinstance(value, bool):
        return value
    if callable(value) and not isinstance(value, type):
        return value  # type: ignore[no-any-return]
    raise TypeError(f"{param} must be a bool or a callable returning a bool, got {value!r}")


def read_switch(switch: bool | Callable[[], bool]) -> bool:
    """Read a switch that :func:`check_switch` accepted: the bool, or what the callable returns now.

    A callable that raises reads ``True``: a broken ``enforce=`` switch must
    not turn a limit off.
    """
    if switch is True or switch is False:
        return switch
    try:
        return bool(switch())
    except Exception:
        return True


def check_callable(
    value: Any, param: str, what: str = "a callable", *, allow_none: bool = False, allow_class: bool = False
) -> Any:
    """A callable, or ``None`` when allowed.

    A class is refused unless ``allow_class``: passed as a hook or a
    predicate it is almost always a mistake (``on_result=Response``), while a
    factory may well be one.
    """
    if value is None and allow_none:
        return None
    if not callable(value) or (isinstance(value, type) and not allow_class):
        raise TypeError(f"{param} must be {what}{' or None' if allow_none else ''}, got {value!r}")
    return value


def check_clock(value: Any, param: str = "clock") -> Clock:
    """A :class:`~resilient.Clock`, or ``None`` for :data:`~resilient.SYSTEM_CLOCK`."""
    if value is None:
        return SYSTEM_CLOCK
    if not isinstance(value, Clock):
        raise TypeError(f"{param} must be a Clock (now/sleep/asleep/call_at), got {value!r}")
    return value
