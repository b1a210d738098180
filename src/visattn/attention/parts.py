"""Arithmetic the mechanisms share: head and width checks, the hidden-width rule, padding.

Every mechanism with a reduced inner width takes the same four options, resolved by
``hidden_width`` (the rule and its formula are there): ``reduction`` (the papers' integer
ratio r), ``min_hidden`` (a floor), ``round_to`` (a multiple to round to) and ``hidden`` (an
explicit width). They stand for timm's ``rd_ratio`` (``1 / reduction``), ``rd_divisor`` and
``rd_channels``; each mechanism's defaults reproduce its paper (see its module docstring).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

# check_heads is defined beside the other argument checks and re-exported here, so that a
# mechanism takes every head and width helper from this module.
from .._checks import check_heads, check_int

__all__ = ["check_heads", "head_width", "hidden_width", "largest_divisor", "pad_to_multiple", "round_up"]


def head_width(channels: int, heads: Any, head_dim: Any = None) -> int:
    """The width of each head where it may differ from ``channels / heads``.

    Args:
        channels: the input width C.
        heads: number of heads, an integer >= 1.
        head_dim: the width of each head; ``None`` for ``C // heads``, and ``heads`` must
            then divide C.

    Example:
        >>> head_width(64, 4), head_width(64, 3, 32)
        (16, 32)
    """
    check_int("heads", heads)
    if head_dim is None:
        if channels % heads:
            message = f"heads must divide channels ({channels}) when head_dim is not given, got {heads}"
            raise ValueError(message)
        return channels // heads
    return check_int("head_dim", head_dim)


def hidden_width(
    channels: int, reduction: Any, min_hidden: Any = 1, round_to: Any = 1, hidden: Any = None
) -> int:
    """The reduced width of a bottleneck, a gate's MLP or a query/key projection.

    With ``w = C // reduction`` and ``d = round_to``::

        width = hidden                                          if hidden is given
        width = max(min_hidden, w)                              if d == 1
        width = max(min_hidden, d, d * floor((w + d // 2) / d)) otherwise

    that is ``C // r`` (the papers' ``C / r``, exact for the widths they use), rounded to
    the nearest multiple of ``d`` with halves up and at least ``d``, then floored at
    ``min_hidden``. For every even ``d`` this equals timm's
    ``max(min_hidden, make_divisible(C / r, d, round_limit=0))``: rounding the integer
    ``C // r`` or the real ``C / r`` to a multiple of an even ``d`` gives the same multiple.
    With ``d = 1`` the width is the floor of ``C / r``, where timm rounds to the nearest
    integer (C = 40, r = 16: 2 here, 3 in timm's CBAM); pass ``hidden`` to match timm there.

    Args:
        channels: the input width C.
        reduction: the ratio r, an integer >= 1.
        min_hidden: lower bound of the width, an integer >= 1.
        round_to: the multiple d to round to, an integer >= 1.
        hidden: an explicit width (integer >= 1) that overrides the rule, or ``None``.

    Example:
        >>> hidden_width(200, reduction=16), hidden_width(200, reduction=16, round_to=8)
        (12, 16)
    """
    check_int("reduction", reduction)
    check_int("min_hidden", min_hidden)
    check_int("round_to", round_to)
    if hidden is not None:
        return check_int("hidden", hidden)
    width = channels // reduction
    if round_to > 1:
        width = max(round_to, (width + round_to // 2) // round_to * round_to)
    return max(min_hidden, width)


def largest_divisor(value: int, at_most: int) -> int:
    """The largest divisor of ``value`` that is at most ``at_most`` (group counts that must
    divide a width)."""
    return max(g for g in range(1, min(at_most, value) + 1) if value % g == 0)


def round_up(size: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= ``size``."""
    return -(-size // multiple) * multiple


def pad_to_multiple(x: Tensor, multiple: int, *, channels_last: bool = False, value: float = 0.0) -> Tensor:
    """Pad the two spatial sides at the bottom and right to multiples of ``multiple``.

    Args:
        x: ``(..., H, W)``, or ``(..., H, W, C)`` with ``channels_last=True``.
        multiple: the block, window or stride side the map must tile.
        channels_last: the spatial sides are the two dimensions before the last.
        value: the fill of the new positions.

    Returns ``x`` itself when both sides are multiples already, otherwise a new tensor with
    sides ``round_up(H, multiple)`` and ``round_up(W, multiple)``.

    Example:
        >>> pad_to_multiple(torch.ones(1, 3, 5, 7), 4).shape
        torch.Size([1, 3, 8, 8])
    """
    H, W = x.shape[-3:-1] if channels_last else x.shape[-2:]
    dh, dw = round_up(H, multiple) - H, round_up(W, multiple) - W
    if not (dh or dw):
        return x
    pad = (0, 0, 0, dw, 0, dh) if channels_last else (0, dw, 0, dh)
    return F.pad(x, pad, value=value)
