"""Pure index and layout functions for windowed, blocked and relative-position attention.

They compute where each window slot reads from, how a map is cut into windows and back, and
which row of a relative-position table each (query, key) pair reads. No ``nn.Module`` and no
learnable state lives here; the attention modules and the third-party recorders share them.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "grid_index",
    "halo_index",
    "inverse_index",
    "neighborhood_index",
    "relative_index",
    "relative_position_index",
    "rows_on_path",
    "window_partition",
    "window_reverse",
]


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


def rows_on_path(flat: Tensor, where: Tensor) -> tuple[Tensor, Tensor]:
    """Gather per-position rows of window weights so that the gathered copy stays on the
    path to the output.

    A windowed mechanism records one row per original position, gathered from its per-window
    weights; for gradient-based explanations the recorded tensor itself must feed the output.
    This returns the gathered rows and the weights rebuilt from them (equal values): attend
    with the rebuilt weights and the recorded rows' gradient is the model's.

    Args:
        flat: ``(B, heads, slots, K)`` weights of every window slot.
        where: ``(P,)`` int64: the slot of each recorded position (see ``inverse_index``).

    Returns:
        ``(rows (B, heads, P, K), rebuilt (B, heads, slots, K))``.

    Example:
        >>> w = torch.rand(1, 2, 4, 3)
        >>> rows, rebuilt = rows_on_path(w, torch.tensor([2, 0]))
        >>> torch.equal(rows, w[:, :, [2, 0]]), torch.equal(rebuilt, w)
        (True, True)
    """
    rows = flat[:, :, where]  # (B, heads, P, K)
    rebuilt = flat.clone()
    rebuilt[:, :, where] = rows
    return rows, rebuilt
