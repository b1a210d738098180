"""The fixed 2-D sine-cosine position encoding of a grid."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sincos_2d"]


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
