"""The kernels behind ``visattn.attention``; ``functional.attention`` chooses among them.

- ``explicit``: scores, softmax and matmul as ordinary autograd operations. The weights are an
  intermediate of the graph, so a caller can record them and read their gradient.
- ``matmul``: the same maths as one autograd function with a hand-written backward: the scale
  is folded into q, biases and relative logits are added in place, only the weights are kept
  for the backward, and the softmax gradient uses ``rowsum(dO * O)`` (an L x d pass) instead
  of ``rowsum(dP * P)`` (an L x S pass). Fastest for small windows and learnable biases.
- ``chunked``: ``matmul`` over slices of the queries, each slice recomputed in the backward,
  so that no more than one slice of scores exists at a time.
- ``fused``: PyTorch's ``scaled_dot_product_attention`` with operands laid out so that the CPU
  flash kernel really runs (4-D, last dimension contiguous); relative logits ride in the
  operands (q' = [q, logits], k' = [k, one-hot]) instead of an N x N mask.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint


class Relative(NamedTuple):
    """Factored 2-D relative logits: key ``r * C + c`` of a query gets ``rows[..., r] +
    cols[..., c]`` added to its scaled score (BoT, halo: ``q . r_h[dy] + q . r_w[dx]``).

    rows: ``(..., L, R)``; cols: ``(..., L, C)``; the keys form an ``R x C`` grid, row-major.
    """

    rows: Tensor
    cols: Tensor


class Terms(NamedTuple):
    """What is added to the scaled scores ``q k^T * scale`` before the softmax."""

    mask: Tensor | None  # bool, True where the key may be attended to
    bias: Tensor | None  # float, added; may require grad
    rel: Relative | None


def add_terms(scores: Tensor, terms: Terms, *, inplace: bool) -> Tensor:
    """``scores`` plus the bias, relative logits and mask; in place when ``inplace``."""
    s = scores if inplace else scores.clone()
    if terms.bias is not None:
        s.add_(terms.bias.to(s.dtype))
    if terms.rel is not None:
        rows, cols = terms.rel
        grid = s.view(*s.shape[:-1], rows.shape[-1], cols.shape[-1])  # (..., L, R, C)
        grid.add_(rows.to(s.dtype).unsqueeze(-1)).add_(cols.to(s.dtype).unsqueeze(-2))
    if terms.mask is not None:
        s.masked_fill_(~terms.mask, float("-inf"))
    return s


def softmax_rows(scores: Tensor, *, masked: bool, inplace: bool = False) -> Tensor:
    """Softmax over the last axis in at least fp32 (half-precision inputs match the fused
    kernels). With ``masked``, rows with nothing to attend to (all ``-inf``) get zero weights,
    as in PyTorch's kernels, where the plain softmax gives NaN; ``inplace`` only outside
    autograd (the softmax's backward keeps its output)."""
    wide = torch.promote_types(scores.dtype, torch.float32)
    weights = scores.softmax(dim=-1, dtype=wide).to(scores.dtype)
    if not masked:
        return weights
    return weights.nan_to_num_(nan=0.0) if inplace else weights.nan_to_num(nan=0.0)


def may_block_rows(terms: Terms) -> bool:
    """Whether a whole row can be ``-inf``: a boolean mask, or a constant additive one (where
    ``-inf`` is the convention for "forbidden"); learnable biases and relative logits are
    taken to be finite wherever a row has a key left."""
    return terms.mask is not None or (terms.bias is not None and not terms.bias.requires_grad)


def explicit(
    q: Tensor, k: Tensor, v: Tensor, terms: Terms, scale: float, dropout_p: float
) -> tuple[Tensor, Tensor]:
    """Autograd operations throughout; returns ``(output, weights before dropout)``."""
    scores = add_terms((q * scale) @ k.transpose(-2, -1), terms, inplace=True)  # (..., L, S)
    weights = softmax_rows(scores, masked=may_block_rows(terms))  # (..., L, S)
    attended = F.dropout(weights, dropout_p) if dropout_p > 0 else weights
    return attended @ v, weights  # (..., L, Ev), (..., L, S)


class _Matmul(torch.autograd.Function):
    """softmax(q k^T * scale + terms) v with a backward that keeps only the weights."""

    @staticmethod
    def forward(ctx, q, k, v, bias, rows, cols, mask, scale):  # type: ignore[override]
        qs = q * scale  # (..., L, E): cheaper than scaling the L x S scores
        terms = Terms(mask, bias, None if rows is None else Relative(rows, cols))
        scores = add_terms(torch.matmul(qs, k.transpose(-2, -1)), terms, inplace=True)  # (..., L, S)
        weights = softmax_rows(scores, masked=may_block_rows(terms), inplace=True)
        del scores
        out = torch.matmul(weights, v)  # (..., L, Ev)
        ctx.save_for_backward(qs, k, v, weights, out)
        ctx.scale = scale
        ctx.shapes = tuple(None if t is None else (t.shape, t.dtype) for t in (bias, rows, cols))
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        qs, k, v, weights, out = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad_out = grad_out.contiguous()
        dv = torch.matmul(weights.transpose(-2, -1), grad_out) if need[2] else None  # (..., S, Ev)
        # d scores = P * (dP - rowsum(dP * P)), and rowsum(dP * P) = rowsum(dO * O).
        dscores = torch.matmul(grad_out, v.transpose(-2, -1))  # (..., L, S): dP
        dscores.sub_((grad_out * out).sum(-1, keepdim=True)).mul_(weights)
        dq = torch.matmul(dscores, k).mul_(ctx.scale) if need[0] else None  # (..., L, E)
        dk = torch.matmul(dscores.transpose(-2, -1), qs) if need[1] else None  # (..., S, E)
        bias, rows, cols = ctx.shapes
        dbias = dscores.sum_to_size(bias[0]).to(bias[1]) if need[3] else None
        drows = dcols = None
        if need[4] or need[5]:
            grid = dscores.view(*dscores.shape[:-1], rows[0][-1], cols[0][-1])  # (..., L, R, C)
            drows = grid.sum(-1).sum_to_size(rows[0]).to(rows[1]) if need[4] else None
            dcols = grid.sum(-2).sum_to_size(cols[0]).to(cols[1]) if need[5] else None
        return dq, dk, dv, dbias, drows, dcols, None, None


def matmul(q: Tensor, k: Tensor, v: Tensor, terms: Terms, scale: float) -> Tensor:
    """The ``_Matmul`` kernel; operands are expanded to one batch shape first (the expand's
    backward sums the gradients of broadcast operands)."""
    lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    q, k, v = (t.expand(*lead, *t.shape[-2:]) for t in (q, k, v))
    rows, cols = terms.rel if terms.rel is not None else (None, None)
    return _Matmul.apply(q, k, v, terms.bias, rows, cols, terms.mask, scale)


def chunked(q: Tensor, k: Tensor, v: Tensor, terms: Terms, scale: float, rows_per_chunk: int) -> Tensor:
    """``matmul`` over slices of ``rows_per_chunk`` queries; with gradients each slice is
    recomputed in the backward, so at most one slice of scores is alive."""
    L = q.shape[-2]

    def rows_of(t: Tensor | None, start: int, stop: int) -> Tensor | None:
        # Terms broadcast over the query axis when it has size 1.
        return t if t is None or t.shape[-2] == 1 else t[..., start:stop, :]

    def piece(start: int, stop: int) -> Tensor:
        rel = None
        if terms.rel is not None:
            rel = Relative(rows_of(terms.rel.rows, start, stop), rows_of(terms.rel.cols, start, stop))
        part = Terms(rows_of(terms.mask, start, stop), rows_of(terms.bias, start, stop), rel)
        return matmul(q[..., start:stop, :], k, v, part, scale)

    grad = torch.is_grad_enabled()
    outs = [
        checkpoint(piece, i, min(i + rows_per_chunk, L), use_reentrant=False)
        if grad
        else piece(i, min(i + rows_per_chunk, L))
        for i in range(0, L, rows_per_chunk)
    ]
    return torch.cat(outs, dim=-2)  # (..., L, Ev)


def fused(q: Tensor, k: Tensor, v: Tensor, terms: Terms, scale: float, dropout_p: float) -> Tensor:
    """``scaled_dot_product_attention``; constant terms become its additive mask, relative
    logits are folded into the operands."""
    lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    out_shape = (*lead, q.shape[-2], v.shape[-1])
    width = v.shape[-1]
    if terms.rel is not None:
        q, k, v = _fold_relative(q, k, v, terms.rel, scale, lead)
    mask = _constant_mask(terms)
    # The CPU flash kernel wants 4-D operands whose last dimension is contiguous; anything
    # else (5-D windows, transposed projections) silently runs the N x N math path.
    split = _fold_point(mask, lead)
    q4, k4, v4 = (_as_4d(t, lead, split) for t in (q, k, v))
    m4 = None if mask is None else _mask_as_4d(mask, lead, split)
    if m4 is not None and m4.dtype != torch.bool:
        m4 = m4.to(q.dtype)  # the kernels want an additive mask in the operands' dtype
    out = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=m4, dropout_p=dropout_p, scale=scale)
    return out[..., :width].reshape(out_shape)  # (..., L, Ev)


def _constant_mask(terms: Terms) -> Tensor | None:
    """Bias and mask as one additive (or boolean) mask for the fused kernel."""
    mask, bias = terms.mask, terms.bias
    if bias is None:
        return mask
    if mask is None:
        return bias
    return bias.masked_fill(~mask, float("-inf"))


def _fold_relative(
    q: Tensor, k: Tensor, v: Tensor, rel: Relative, scale: float, lead: torch.Size
) -> tuple[Tensor, Tensor, Tensor]:
    """q' = [q, rows / scale, cols / scale], k' = [k, one-hot key row, one-hot key column]:
    q'.k' * scale = q.k * scale + rows[r] + cols[c] with no L x S tensor; v is zero-padded
    to the same width, which the CPU flash kernel needs."""
    R, C = rel.rows.shape[-1], rel.cols.shape[-1]
    key = torch.arange(R * C, device=q.device)
    onehot = torch.cat([F.one_hot(key // C, R), F.one_hot(key % C, C)], -1).to(k.dtype)  # (S, R+C)
    q = torch.cat([q.expand(*lead, *q.shape[-2:]), rel.rows.expand(*lead, -1, -1) / scale,
                   rel.cols.expand(*lead, -1, -1) / scale], -1)  # (..., L, E+R+C)  # fmt: skip
    k = torch.cat([k.expand(*lead, *k.shape[-2:]), onehot.expand(*lead, -1, -1)], -1)  # (..., S, E+R+C)
    return q, k, F.pad(v, (0, q.shape[-1] - v.shape[-1]))


def _fold_point(mask: Tensor | None, lead: torch.Size) -> int:
    """Where the leading dimensions split into the kernel's batch and heads axes: the batch
    takes the dimensions a mask broadcasts over, so that the mask is never copied per sample
    (a window mask ``(nWin, 1, K, K)`` against ``(B, nWin, heads)`` folds as
    ``(B, nWin * heads)``)."""
    if len(lead) <= 2:
        return 0
    if mask is None:
        return len(lead) - 1
    own = mask.shape[:-2][-len(lead) :] if mask.ndim > 2 else ()
    own = (1,) * (len(lead) - len(own)) + tuple(own)
    varying = [i for i, n in enumerate(own) if n != 1]
    return min(varying[0] if varying else len(lead) - 1, len(lead) - 1)


def _as_4d(t: Tensor, lead: torch.Size, split: int) -> Tensor:
    if t.shape[:-2] != lead:
        t = t.expand(*lead, *t.shape[-2:])
    if len(lead) <= 2:  # pad to 4-D with leading ones
        t = t.reshape(*([1] * (2 - len(lead))), *t.shape)
    else:  # (batch = lead[:split], heads = lead[split:])
        t = t.reshape(math.prod(lead[:split]), math.prod(lead[split:]), *t.shape[-2:])
    return t if t.stride(-1) == 1 else t.contiguous()


def _mask_as_4d(mask: Tensor, lead: torch.Size, split: int) -> Tensor:
    mask = mask.reshape(*([1] * (len(lead) + 2 - mask.ndim)), *mask.shape)  # (*lead', L', S')
    if len(lead) <= 2:
        return mask.reshape(*([1] * (2 - len(lead))), *mask.shape)
    batch = math.prod(mask.shape[:split])  # 1, or the mask varies per sample: no broadcast
    heads = mask.shape[split : len(lead)]
    if math.prod(heads) == 1:
        return mask.reshape(batch, 1, *mask.shape[-2:])
    inner = mask.expand(*mask.shape[:split], *lead[split:], *mask.shape[-2:])
    return inner.reshape(batch, math.prod(lead[split:]), *mask.shape[-2:])


def default_scale(q: Tensor, scale: float | None) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
