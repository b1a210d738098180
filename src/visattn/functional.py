"""Pure tensor functions behind the attention modules. No ``nn.Module`` lives here.

``attention`` keeps the interface of the well-known tutorial (``attention(query, key,
value)`` returning the output and the weights) but routes every call that does not need the
weights through PyTorch's fused ``scaled_dot_product_attention``, with the operands laid out
so that the fused kernel really runs instead of silently falling back to the path that
materialises the N x N score matrix.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "attention",
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


def attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    mask: Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    need_weights: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Scaled dot-product attention ``softmax(q k^T * scale + mask) v``.

    Args:
        query: ``(..., L, E)``; any number of leading batch dimensions.
        key: ``(..., S, E)`` with the same leading dimensions (or broadcastable to them).
        value: ``(..., S, Ev)``.
        mask: ``(..., L, S)``, broadcastable. Boolean masks follow
            ``torch.nn.functional.scaled_dot_product_attention``: ``True`` means the
            position may be attended to. Floating masks are added to the scores (use
            ``-inf`` to forbid). A query row that may attend to nothing gets zero weights
            and a zero output, as in PyTorch's kernels.
        dropout_p: dropout on the attention weights; pass 0 in evaluation.
        scale: score scale; ``1 / sqrt(E)`` when ``None``.
        need_weights: return the ``(..., L, S)`` weights. Without them the fused kernel
            runs and no ``L x S`` tensor is materialised (where the kernel allows it: a mask
            that requires grad still runs PyTorch's math path).

    Returns:
        ``(output, weights)``: output ``(..., L, Ev)``; weights ``(..., L, S)`` before
        dropout (rows sum to 1), or ``None`` when ``need_weights`` is false.

    Example:
        >>> q = k = v = torch.randn(2, 4, 49, 32)
        >>> out, w = attention(q, k, v)
        >>> out.shape, w.shape
        (torch.Size([2, 4, 49, 32]), torch.Size([2, 4, 49, 49]))
    """
    _check_operands(query, key, value, mask, dropout_p, scale)
    if need_weights:
        return _explicit(query, key, value, mask, dropout_p, scale)
    return _fused(query, key, value, mask, dropout_p, scale), None


def _check_operands(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float, scale: float | None
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
    shapes = [tuple(t.shape) for t in (q, k, v, mask) if t is not None]
    try:
        lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
        target = (*lead, q.shape[-2], k.shape[-2])
        ok = mask is None or torch.broadcast_shapes(mask.shape, target) == target
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"attention: shapes of query, key, value (and mask) do not broadcast: {shapes}")
    if mask is not None and mask.dtype != torch.bool and not mask.is_floating_point():
        raise ValueError(f"attention: mask must be bool or floating point, got {mask.dtype}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"attention: dropout_p must be in [0, 1), got {dropout_p}")
    if scale is not None and not scale > 0:
        raise ValueError(f"attention: scale must be positive, got {scale}")


def _explicit(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float, scale: float | None
) -> tuple[Tensor, Tensor]:
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q * scale) @ k.transpose(-2, -1)  # (..., L, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    # Softmax in at least fp32 so that half-precision inputs match the fused kernels.
    wide = torch.promote_types(scores.dtype, torch.float32)
    weights = scores.softmax(dim=-1, dtype=wide).to(q.dtype)  # (..., L, S)
    if mask is not None:
        # A row with nothing to attend to is all -inf: softmax gives NaN, the kernels give 0.
        blocked = scores.isneginf().all(dim=-1, keepdim=True)
        weights = weights.masked_fill(blocked, 0.0)
    attended = F.dropout(weights, dropout_p) if dropout_p > 0 else weights
    return attended @ v, weights  # (..., L, Ev), (..., L, S)


def _fused(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float, scale: float | None
) -> Tensor:
    lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    out_shape = (*lead, q.shape[-2], v.shape[-1])
    # The CPU flash kernel wants 4-D operands whose last dimension is contiguous; anything
    # else (5-D windows, transposed projections) silently runs the N x N math path.
    q4, k4, v4 = (_as_4d(t, lead) for t in (q, k, v))
    m4 = None if mask is None else _mask_as_4d(mask, lead, q.shape[-2], k.shape[-2])
    if m4 is not None and m4.dtype != torch.bool:
        m4 = m4.to(q.dtype)  # the kernels want an additive mask in the operands' dtype
    out = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=m4, dropout_p=dropout_p, scale=scale)
    return out.reshape(out_shape)  # (..., L, Ev)


def _as_4d(t: Tensor, lead: torch.Size) -> Tensor:
    if t.shape[:-2] != lead:
        t = t.expand(*lead, *t.shape[-2:])
    # Pad to 4-D with leading ones, or fold the outer dimensions into the batch.
    t = t.reshape(*([1] * (2 - len(lead))), *t.shape) if len(lead) <= 2 else t.reshape(-1, *t.shape[-3:])
    return t if t.stride(-1) == 1 else t.contiguous()


def _mask_as_4d(mask: Tensor, lead: torch.Size, length: int, source: int) -> Tensor:
    mask = mask.reshape(*([1] * (len(lead) + 2 - mask.ndim)), *mask.shape)  # (*lead', L', S')
    if len(lead) <= 2:
        return mask.reshape(*([1] * (2 - len(lead))), *mask.shape)
    outer = mask.shape[: len(lead) - 1]
    if all(n == 1 for n in outer):  # broadcast over the folded dimensions: no copy needed
        return mask.reshape(1, *mask.shape[len(lead) - 1 :])
    return mask.expand(*lead, length, source).reshape(-1, lead[-1], length, source)


def sincos_2d(
    height: int,
    width: int,
    dim: int,
    *,
    temperature: float = 10000.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Fixed 2-D sine-cosine position encoding of a ``height x width`` grid.

    A quarter of the channels encodes the row with sines, a quarter with cosines, and the
    same for the column (Vaswani et al. 2017, extended to 2-D as in Carion et al. 2020).
    Positions are integer grid indices, so the dot product of two encodings depends only on
    their offset, at any grid size. When ``dim`` is not a multiple of 4, the remaining
    channels are zero.

    Returns:
        ``(height * width, dim)``, row-major over the grid.

    Example:
        >>> sincos_2d(3, 5, 8).shape
        torch.Size([15, 8])
    """
    if height < 1 or width < 1 or dim < 1:
        raise ValueError(f"sincos_2d needs positive sizes, got {height}x{width}, dim {dim}")
    quarter = dim // 4
    freq = temperature ** (-torch.arange(quarter, device=device, dtype=torch.float64) / max(quarter, 1))
    ys = torch.arange(height, device=device, dtype=torch.float64)[:, None] * freq  # (H, q)
    xs = torch.arange(width, device=device, dtype=torch.float64)[:, None] * freq  # (W, q)
    enc = torch.zeros(height, width, dim, device=device, dtype=torch.float64)
    enc[..., 0 * quarter : 1 * quarter] = ys.sin()[:, None, :]
    enc[..., 1 * quarter : 2 * quarter] = ys.cos()[:, None, :]
    enc[..., 2 * quarter : 3 * quarter] = xs.sin()[None, :, :]
    enc[..., 3 * quarter : 4 * quarter] = xs.cos()[None, :, :]
    return enc.reshape(height * width, dim).to(dtype)  # (H*W, dim)


# ---------------------------------------------------------------------------------------------
# Window helpers: pure index and layout functions for windowed (local) attention.


def window_partition(x: Tensor, window: tuple[int, int]) -> Tensor:
    """Split a channels-last map into non-overlapping windows.

    Args:
        x: ``(B, H, W, C)`` with ``H`` a multiple of ``window[0]`` and ``W`` of ``window[1]``
            (pad first).
        window: ``(wh, ww)``, the window's height and width.

    Returns:
        ``(B, nH * nW, wh * ww, C)``: windows in row-major order over the window grid, the
        positions inside each window in row-major order.

    Example:
        >>> window_partition(torch.randn(2, 14, 21, 8), (7, 7)).shape
        torch.Size([2, 6, 49, 8])
    """
    wh, ww = window
    _, H, W, C = x.shape
    if wh < 1 or ww < 1 or H % wh or W % ww:
        raise ValueError(
            f"window_partition needs H, W that are multiples of the window {window}, got {H}x{W}"
        )
    x = x.reshape(-1, H // wh, wh, W // ww, ww, C)  # (B, nH, wh, nW, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, (H // wh) * (W // ww), wh * ww, C)  # (B, nWin, K, C)


def window_reverse(windows: Tensor, window: tuple[int, int], height: int, width: int) -> Tensor:
    """Inverse of ``window_partition``: ``(B, nH * nW, wh * ww, C) -> (B, height, width, C)``.

    Example:
        >>> x = torch.randn(2, 14, 21, 8)
        >>> torch.equal(window_reverse(window_partition(x, (7, 7)), (7, 7), 14, 21), x)
        True
    """
    wh, ww = window
    C = windows.shape[-1]
    if height % wh or width % ww or windows.shape[-3:-1] != ((height // wh) * (width // ww), wh * ww):
        raise ValueError(
            f"window_reverse: {tuple(windows.shape)} windows of {window} do not tile {height}x{width}"
        )
    x = windows.reshape(-1, height // wh, width // ww, wh, ww, C)  # (B, nH, nW, wh, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, C)  # (B, H, W, C)


def relative_index(length: int, max_distance: int, device: torch.device | str | None = None) -> Tensor:
    """``(L, L)`` int64: row ``i``, column ``j`` holds ``clip(j - i, -M, M) + M``, the row
    of a ``(2M + 1, d)`` relative table that the pair (query ``i``, key ``j``) reads. Offsets
    beyond ``M`` share the edge rows (clipped relative positions, Shaw et al. 2018,
    arXiv:1803.02155), so one table serves every length."""
    pos = torch.arange(length, device=device)
    return (pos[None, :] - pos[:, None]).clamp(-max_distance, max_distance) + max_distance


def relative_position_index(
    window_h: int, window_w: int, *, device: torch.device | str | None = None
) -> Tensor:
    """Index into a ``(2 wh - 1) * (2 ww - 1)`` relative-position table for every pair of
    positions of a ``wh x ww`` window (Swin, Liu et al. 2021).

    Entry ``[i, j]`` is ``(dy + wh - 1) * (2 ww - 1) + (dx + ww - 1)`` where ``(dy, dx)`` is
    query ``i``'s row and column minus key ``j``'s; positions are row-major in the window.

    Returns:
        ``(wh * ww, wh * ww)`` int64.

    Example:
        >>> relative_position_index(2, 2)
        tensor([[4, 3, 1, 0],
                [5, 4, 2, 1],
                [7, 6, 4, 3],
                [8, 7, 5, 4]])
    """
    rows = torch.arange(window_h, device=device).repeat_interleave(window_w)  # (K,)
    cols = torch.arange(window_w, device=device).repeat(window_h)  # (K,)
    dy = rows[:, None] - rows[None, :] + window_h - 1  # (K, K), in [0, 2 wh - 2]
    dx = cols[:, None] - cols[None, :] + window_w - 1  # (K, K), in [0, 2 ww - 2]
    return dy * (2 * window_w - 1) + dx


def halo_index(length: int, block: int, halo: int, *, device: torch.device | str | None = None) -> Tensor:
    """Positions read by each block of a blocked axis with a halo (HaloNet, Vaswani et al. 2021).

    The axis is cut into ``ceil(length / block)`` blocks; block ``i`` reads positions
    ``i * block - halo`` to ``(i + 1) * block + halo - 1``.

    Returns:
        ``(ceil(length / block), block + 2 * halo)`` int64 positions, ``-1`` outside
        ``[0, length)``.

    Example:
        >>> halo_index(5, 2, 1)
        tensor([[-1,  0,  1,  2],
                [ 1,  2,  3,  4],
                [ 3,  4, -1, -1]])
    """
    blocks = -(-length // block)
    start = torch.arange(blocks, device=device) * block - halo  # (nBlocks,)
    index = start[:, None] + torch.arange(block + 2 * halo, device=device)  # (nBlocks, win)
    return torch.where((index >= 0) & (index < length), index, -1)


def neighborhood_index(
    length: int, kernel: int, dilation: int = 1, *, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """Neighbours of each position along one axis, as in neighborhood attention (Hassani et
    al. 2023, NATTEN).

    Position ``i`` attends to ``kernel`` positions spaced ``dilation`` apart, all congruent to
    ``i`` modulo ``dilation``, centred on ``i`` and shifted inward at the borders so that the
    neighbourhood keeps ``kernel`` positions. When the positions congruent to ``i`` are fewer
    than ``kernel`` (``length < kernel * dilation``), the neighbourhood is all of them and the
    remaining slots are empty.

    Returns:
        ``(index, rel)``, each ``(length, kernel)`` int64: ``index`` the neighbour's position
        (``-1`` for an empty slot); ``rel`` the neighbour's offset from ``i`` in units of
        ``dilation``, plus ``kernel - 1``, so in ``[0, 2 * kernel - 2]`` (``kernel - 1`` for
        empty slots): the index into a ``2 * kernel - 1`` relative-position table.

    Example:
        >>> neighborhood_index(5, 3)[0]
        tensor([[0, 1, 2],
                [0, 1, 2],
                [1, 2, 3],
                [2, 3, 4],
                [2, 3, 4]])
    """
    pos = torch.arange(length, device=device)  # (L,)
    group, step = pos % dilation, pos // dilation  # dilation group and place inside it
    size = (length - group + dilation - 1) // dilation  # (L,) positions in the group
    span = size.clamp(max=kernel)
    start = torch.minimum((step - kernel // 2).clamp(min=0), size - span)  # (L,) inward at borders
    place = start[:, None] + torch.arange(kernel, device=device)  # (L, kernel)
    filled = place < size[:, None]
    index = torch.where(filled, group[:, None] + place * dilation, -1)
    rel = torch.where(filled, place - step[:, None] + kernel - 1, kernel - 1)
    return index, rel


def grid_index(rows: Tensor, cols: Tensor, width: int) -> Tensor:
    """Combine per-axis position lists into flat 2-D positions (row-major, ``width`` wide).

    Args:
        rows: ``(R, a)`` row positions for each of ``R`` row groups, ``-1`` for none.
        cols: ``(S, c)`` column positions for each of ``S`` column groups, ``-1`` for none.
        width: the grid's width.

    Returns:
        ``(R * S, a * c)`` int64: entry ``[r * S + s, i * c + j]`` is
        ``rows[r, i] * width + cols[s, j]``, or ``-1`` when either is ``-1``.

    Example:
        >>> grid_index(torch.tensor([[0, 1]]), torch.tensor([[2, -1]]), 5)
        tensor([[ 2, -1,  7, -1]])
    """
    r = rows[:, None, :, None]  # (R, 1, a, 1)
    c = cols[None, :, None, :]  # (1, S, 1, c)
    flat = torch.where((r >= 0) & (c >= 0), r * width + c, -1)  # (R, S, a, c)
    return flat.reshape(rows.shape[0] * cols.shape[0], rows.shape[1] * cols.shape[1])


def inverse_index(slots: Tensor, length: int) -> Tensor:
    """Where each of ``length`` positions sits in a flattened window layout.

    Args:
        slots: any shape, int64: the position held by each slot, each of ``0 .. length - 1``
            exactly once, ``-1`` for padding slots.
        length: number of positions.

    Returns:
        ``(length,)`` int64: the flat index into ``slots`` holding each position, so that
        ``slots.flatten()[inverse_index(slots, length)] == arange(length)``.

    Example:
        >>> inverse_index(torch.tensor([[2, -1], [0, 1]]), 3)
        tensor([2, 3, 0])
    """
    flat = slots.flatten()
    # Padding slots all land in one spare entry that is dropped.
    target = torch.where(flat < 0, length, flat)
    order = torch.arange(flat.numel(), device=slots.device)
    return torch.zeros(length + 1, dtype=torch.long, device=slots.device).scatter(0, target, order)[:length]
