"""Argument checks shared by every constructor: each raises ``ValueError`` naming the option,
the value received and what is accepted."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any


def check_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` must be an int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_float(name: str, value: Any, *, low: float, high: float, high_open: bool = True) -> float:
    """``value`` must be a real number in ``[low, high)`` (or ``[low, high]``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and low <= value and (value < high if high_open else value <= high)
    if not ok:
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name} must be a number in [{low}, {high}{bracket}, got {value!r}")
    return float(value)


def check_choice(name: str, value: Any, choices: Collection[Any]) -> Any:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_odd(name: str, value: Any) -> int:
    """``value`` must be an odd integer >= 1 (a kernel that keeps H x W with padding k // 2)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise ValueError(f"{name} must be an odd integer >= 1, got {value!r}")
    return value


def check_heads(channels: int, heads: Any) -> int:
    """``heads`` must be an integer >= 1 that divides ``channels``."""
    check_int("heads", heads)
    if channels % heads:
        raise ValueError(f"heads must divide channels ({channels}), got {heads}")
    return heads
