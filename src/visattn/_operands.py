"""Checks of the operands of ``visattn.attention``: each raises ``ValueError`` saying which
shapes or values were received and what is accepted."""

from __future__ import annotations

import torch
from torch import Tensor

from .kernels import Relative


def check_operands(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    bias: Tensor | None,
    rel: Relative | None,
    dropout_p: float,
    scale: float | None,
) -> None:
    if q.ndim < 2 or k.ndim < 2 or v.ndim < 2:
        raise ValueError(
            "attention expects query, key and value of shape (..., N, E), got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"attention: query and key must share the last dimension, got {q.shape[-1]} and {k.shape[-1]}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"attention: key and value must have the same length, got {k.shape[-2]} and {v.shape[-2]}"
        )
    shapes = [tuple(t.shape) for t in (q, k, v, mask, bias) if t is not None]
    try:
        lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
        target = (*lead, q.shape[-2], k.shape[-2])
        ok = all(t is None or torch.broadcast_shapes(t.shape, target) == target for t in (mask, bias))
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"attention: shapes of query, key, value (and mask, bias) do not broadcast: {shapes}"
        )
    if mask is not None and mask.dtype != torch.bool and not mask.is_floating_point():
        raise ValueError(f"attention: mask must be bool or floating point, got {mask.dtype}")
    if bias is not None and not bias.is_floating_point():
        raise ValueError(f"attention: bias must be floating point, got {bias.dtype}")
    if rel is not None:
        check_relative(rel, target)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"attention: dropout_p must be in [0, 1), got {dropout_p}")
    if scale is not None and not scale > 0:
        raise ValueError(f"attention: scale must be positive, got {scale}")


def check_relative(rel: Relative, target: tuple[int, ...]) -> None:
    rows, cols = rel
    R, C = rows.shape[-1], cols.shape[-1]
    ok = target[-1] == R * C
    for t, n in ((rows, R), (cols, C)):
        want = (*target[:-1], n)
        try:
            ok = ok and t.is_floating_point() and torch.broadcast_shapes(t.shape, want) == want
        except RuntimeError:
            ok = False
    if not ok:
        raise ValueError(
            f"attention: rel needs rows (..., L, R) and cols (..., L, C) with R * C keys, got "
            f"{tuple(rows.shape)} and {tuple(cols.shape)} for scores {target}"
        )
