"""Pure tensor functions behind the attention modules, and the attention core. No
``nn.Module`` lives here.

``attention`` is the one place that computes a softmax attention. Mechanisms describe their
attention to it -- queries, keys, values, a boolean mask, an additive bias (constant or
learnable), factored 2-D relative logits, dropout, scale, whether the weights are wanted --
and it chooses the kernel by the rules of ``KernelRules``, measured on a 2-core CPU and
written down in docs/architecture.md. ``attention_weights`` turns logits that a mechanism
computed for a structured key set (criss-cross) into weights with the same conventions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from . import kernels
from ._operands import check_operands
from .kernels import Relative, Terms
from .layout import (
    grid_index,
    halo_index,
    inverse_index,
    neighborhood_index,
    relative_index,
    relative_position_index,
    window_partition,
    window_reverse,
)
from .positions import sincos_2d

__all__ = [
    "KERNELS",
    "RULES",
    "KernelRules",
    "Relative",
    "attention",
    "attention_weights",
    "choose_kernel",
    "grid_index",
    "halo_index",
    "inverse_index",
    "neighborhood_index",
    "relative_index",
    "relative_position_index",
    "sincos_2d",
    "window_partition",
    "window_reverse",
]

KERNELS = ("auto", "fused", "matmul", "chunked", "explicit")


@dataclass(frozen=True)
class KernelRules:
    """Thresholds of the kernel choice, set from ``benchmarks/core_rules.py`` (its tables in
    docs/benchmarks.md, the rules in docs/architecture.md).

    Attributes:
        train_scores: with gradients and no learnable term, attention over at most this many
            scores per (query set, key set) pair, ``L * S``, runs ``matmul``: up to 100 x 100
            batched matmuls beat the flash kernel's backward, from 144 x 144 on they tie or lose.
        infer_scores: the same without gradients (no relative logits): up to 100 x 100
            ``matmul`` is 1.1-1.26x faster than the fused kernel, from 144 x 144 on slower.
        rel_scores: relative logits in inference over more than this many scores in all (the
            batch and heads times ``L * S``) are folded into the fused kernel's operands; below
            it, and whenever gradients flow, ``matmul`` is faster (1.2-1.9x the folded kernel's
            speed with up to 4 M scores in all), above it the fold (1.8x at 32 M, BoT at 32 x 32
            with batch 8).
        score_bytes: ``matmul`` whose scores for the whole batch would take more than this
            runs ``chunked``.
    """

    train_scores: int = 100 * 100
    infer_scores: int = 100 * 100
    rel_scores: int = 1 << 23
    score_bytes: int = 1 << 30


RULES = KernelRules()


def attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    rel: Relative | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    need_weights: bool = True,
    kernel: str = "auto",
) -> tuple[Tensor, Tensor | None]:
    """Scaled dot-product attention ``softmax(q k^T * scale + bias + rel + mask) v``.

    Args:
        query: ``(..., L, E)``; any number of leading batch dimensions.
        key: ``(..., S, E)`` with the same leading dimensions (or broadcastable to them).
        value: ``(..., S, Ev)``.
        mask: ``(..., L, S)``, broadcastable. Boolean masks follow
            ``torch.nn.functional.scaled_dot_product_attention``: ``True`` means the
            position may be attended to. A floating mask is an additive bias (use ``-inf``
            to forbid). A query row that may attend to nothing gets zero weights and a zero
            output, as in PyTorch's kernels.
        bias: ``(..., L, S)`` floating, broadcastable, added to the scaled scores; it may
            require grad (a learnable relative-position table, gathered).
        rel: factored relative logits ``Relative(rows (..., L, R), cols (..., L, C))`` over
            keys on an ``R x C`` grid (``S == R * C``), added to the scaled scores.
        dropout_p: dropout on the attention weights; pass 0 in evaluation.
        scale: score scale; ``1 / sqrt(E)`` when ``None``.
        need_weights: return the ``(..., L, S)`` weights, computed with ordinary autograd
            operations so that their gradient can be read. Without them no ``L x S`` tensor
            is kept unless the chosen kernel needs one.
        kernel: ``"auto"`` (the rules of ``RULES``) or one of ``"fused"``, ``"matmul"``,
            ``"chunked"``, ``"explicit"``; the weights always come from ``"explicit"``.

    Returns:
        ``(output, weights)``: output ``(..., L, Ev)``; weights ``(..., L, S)`` before
        dropout (rows sum to 1), or ``None`` when ``need_weights`` is false.

    Example:
        >>> q = k = v = torch.randn(2, 4, 49, 32)
        >>> out, w = attention(q, k, v)
        >>> out.shape, w.shape
        (torch.Size([2, 4, 49, 32]), torch.Size([2, 4, 49, 49]))
    """
    check_operands(query, key, value, mask, bias, rel, dropout_p, scale)
    if kernel not in KERNELS:
        raise ValueError(f"attention: kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    if mask is not None and mask.dtype != torch.bool:  # an additive mask is a bias
        bias = mask if bias is None else bias + mask
        mask = None
    terms, s = Terms(mask, bias, rel), kernels.default_scale(query, scale)
    if need_weights:
        return kernels.explicit(query, key, value, terms, s, dropout_p)
    name = choose_kernel(query, key, value, terms, dropout_p) if kernel == "auto" else kernel
    if name == "explicit":
        return kernels.explicit(query, key, value, terms, s, dropout_p)[0], None
    if name == "fused":
        return kernels.fused(query, key, value, terms, s, dropout_p), None
    if dropout_p > 0:
        raise ValueError(f"attention: kernel {name!r} has no dropout; use 'explicit' or 'fused'")
    if name == "matmul":
        return kernels.matmul(query, key, value, terms, s), None
    return kernels.chunked(query, key, value, terms, s, _chunk_rows(query, key, value)), None


def choose_kernel(q: Tensor, k: Tensor, v: Tensor, terms: Terms, dropout_p: float) -> str:
    """The kernel ``attention`` runs when the weights are not wanted (see ``KernelRules``)."""
    grad = torch.is_grad_enabled()
    extra = (terms.bias, *(terms.rel or ()))
    learnable = grad and any(t is not None and t.requires_grad for t in extra)
    training = learnable or (grad and any(t.requires_grad for t in (q, k, v)))
    if dropout_p > 0:  # only the fused kernel and autograd have dropout
        return "explicit" if learnable else "fused"
    scores = q.shape[-2] * k.shape[-2]
    if terms.rel is not None:
        batch = math.prod(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2]))
        large = not training and batch * scores > RULES.rel_scores
        if large and all(bool(t.isfinite().all()) for t in terms.rel):
            return "fused"  # folded into the operands: no L x S tensor
    elif not (learnable or scores <= (RULES.train_scores if training else RULES.infer_scores)):
        return "fused"
    return "chunked" if _chunk_rows(q, k, v) < q.shape[-2] else "matmul"


def _chunk_rows(q: Tensor, k: Tensor, v: Tensor) -> int:
    """Queries per slice so that one slice of scores stays within ``RULES.score_bytes``."""
    batch = math.prod(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2]))
    per_row = max(1, batch * k.shape[-2] * q.element_size())
    return max(1, min(q.shape[-2], RULES.score_bytes // per_row))


def attention_weights(
    logits: Tensor, *, mask: Tensor | None = None, empty_rows: bool = True, dropout_p: float = 0.0
) -> Tensor:
    """Softmax attention weights over the last axis of ``logits`` that a mechanism computed
    itself for a structured set of keys (e.g. criss-cross: a row and a column per query).

    Args:
        logits: ``(..., K)`` scores, already scaled.
        mask: boolean, broadcastable to ``logits``; ``True`` where the key may be attended to.
            Rows with no key left get zero weights.
        empty_rows: whether the mask can leave a row with no key; ``False`` (the caller
            knows every row keeps one) saves a pass over the weights.
        dropout_p: dropout on the weights; pass 0 in evaluation.

    Returns:
        ``(..., K)`` weights (after dropout when ``dropout_p > 0``).

    Example:
        >>> attention_weights(torch.zeros(2, 3)).sum(-1)
        tensor([1., 1.])
    """
    if mask is not None and mask.dtype != torch.bool:
        raise ValueError(f"attention_weights: mask must be bool, got {mask.dtype}")
    scores = logits if mask is None else logits.masked_fill(~mask, float("-inf"))
    weights = kernels.softmax_rows(scores, masked=mask is not None and empty_rows)
    return F.dropout(weights, dropout_p) if dropout_p > 0 else weights
