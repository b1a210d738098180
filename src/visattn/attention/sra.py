"""Spatial-reduction attention (SRA) of the Pyramid Vision Transformer v2.

Wang, Xie, Li, Fan, Song, Liang, Lu, Luo and Shao, "PVT v2: Improved Baselines with Pyramid
Vision Transformer", Computational Visual Media 2022, arXiv:2106.13797 (SRA itself is from
PVT v1, ICCV 2021, arXiv:2102.12122).

Every position queries a reduced set of keys and values: a strided ``R x R`` convolution
(kernel R, stride R) followed by a LayerNorm turns the ``H x W`` map into
``ceil(H/R) x ceil(W/R)`` tokens, so the cost is ``O(N² / R²)``. ``reduction="pool"`` is
PVT v2's "linear SRA": the map is average-pooled to a fixed ``pool_size x pool_size`` grid,
then a 1x1 convolution, LayerNorm and GELU give ``pool_size²`` keys, so the cost is linear in N.

Deviations: (1) a map whose sides are not multiples of R is zero-padded at the bottom and right
before the strided convolution (PVT's maps are multiples of R; timm's unpadded convolution
silently drops the remainder), so every position contributes to a key and a 1x1 map works; at
multiples of R nothing changes. (2) The adaptive average pooling of linear SRA is written as two
averaging matrices built from H and W (the same bins as ``AdaptiveAvgPool2d``), because
adaptive pooling to sizes other than 1 does not export to ONNX. (3) As a drop-in feature-map
module it adds its input by default (``residual=True``); PVT's ``Attention`` returns the bare
branch and its block adds the (pre-normalised) input. Defaults: 4 heads and R = 2 for a
single drop-in layer (PVT v2 uses R = 8, 4, 2, 1 and 1, 2, 5, 8 heads over its four stages).

Reference checked against: timm ``timm.models.pvt_v2.Attention`` (same weights, within 1e-5,
``residual=False``, at sizes that are multiples of R, and for ``reduction="pool"`` at any size);
padding at other sizes against a float64 reference written in the tests.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_float, check_int
from ..functional import attention
from ..registry import ATTENTION
from .base import AttentionModule
from .parts import check_heads, pad_to_multiple


def adaptive_mean_matrix(size: int, bins: int, *, like: Tensor) -> Tensor:
    """``(bins, size)`` matrix whose row i averages the input positions of adaptive-pooling
    bin i: ``[floor(i * size / bins), ceil((i + 1) * size / bins))``, as ``AdaptiveAvgPool``."""
    i = torch.arange(bins, device=like.device)
    start = (i * size) // bins  # (bins,)
    end = ((i + 1) * size + bins - 1) // bins  # (bins,)
    j = torch.arange(size, device=like.device)
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])  # (bins, size)
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


@ATTENTION.register("sra")
class SpatialReductionAttention(AttentionModule):
    """PVT v2 spatial-reduction attention over the positions of a feature map.

    ``y = x + proj(attention(q(x), k(r(x)), v(r(x))))`` where ``r`` reduces the map to fewer
    tokens: a strided ``sr_ratio x sr_ratio`` convolution and a norm (``reduction="conv"``),
    or average pooling to ``pool_size x pool_size``, a 1x1 convolution, norm and activation
    (``reduction="pool"``, PVT v2's linear SRA).

    Args:
        channels: input and output width C.
        heads: number of heads; must divide C.
        sr_ratio: reduction ratio R of the strided convolution (1: plain self-attention over
            all positions, no convolution and no norm, as in PVT).
        reduction: ``"conv"`` (strided convolution) or ``"pool"`` (linear SRA).
        pool_size: side of the pooled key grid for ``reduction="pool"``.
        qkv_bias: bias in the query and key/value projections.
        attn_drop: dropout on the attention weights while training.
        proj_drop: dropout after the output projection while training.
        residual: add the input to the output.
        norm_layer: norm of the reduced tokens, called with the width.
        act_layer: activation of the pooled tokens (``reduction="pool"`` only), no arguments.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``; recorded map kind ``"softmax"``
    ``(B, heads, H*W, h*w)`` with grid ``(h, w)`` the reduced key grid:
    ``(ceil(H / R), ceil(W / R))``, or ``(pool_size, pool_size)``.

    Example:
        >>> SpatialReductionAttention(64, heads=2, sr_ratio=4)(torch.randn(2, 64, 15, 9)).shape
        torch.Size([2, 64, 15, 9])
    """

    family = "global"
    paper = "Wang et al. 2022, PVT v2: Improved Baselines with Pyramid Vision Transformer"
    complexity = "O(N²/R²)"

    def __init__(
        self,
        channels: int,
        *,
        heads: int = 4,
        sr_ratio: int = 2,
        reduction: str = "conv",
        pool_size: int = 7,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        residual: bool = True,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: Callable[[], nn.Module] = nn.GELU,
    ) -> None:
        super().__init__(channels)
        self.heads = check_heads(channels, heads)
        self.head_dim = channels // heads
        self.sr_ratio = check_int("sr_ratio", sr_ratio)
        self.reduction = check_choice("reduction", reduction, ("conv", "pool"))
        self.pool_size = check_int("pool_size", pool_size)
        self.attn_drop = check_float("attn_drop", attn_drop, low=0.0, high=1.0)
        self.residual = residual
        self.q = nn.Linear(channels, channels, bias=qkv_bias)
        self.kv = nn.Linear(channels, 2 * channels, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)
        self.proj_drop = nn.Dropout(check_float("proj_drop", proj_drop, low=0.0, high=1.0))
        self.sr: nn.Module | None = None
        self.norm: nn.Module | None = None
        self.act: nn.Module | None = None
        if reduction == "pool":
            self.sr = nn.Conv2d(channels, channels, 1)
            self.norm = norm_layer(channels)
            self.act = act_layer()
        elif sr_ratio > 1:
            self.sr = nn.Conv2d(channels, channels, sr_ratio, stride=sr_ratio)
            self.norm = norm_layer(channels)

    def _reduce(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Key/value tokens ``(B, h*w, C)`` and their grid ``(h, w)``."""
        H, W = x.shape[-2:]
        if self.reduction == "pool":
            s = self.pool_size
            rows = adaptive_mean_matrix(H, s, like=x)  # (s, H)
            cols = adaptive_mean_matrix(W, s, like=x)  # (s, W)
            pooled = rows @ x @ cols.T  # (B, C, s, s)
            tokens = self.sr(pooled).flatten(2).transpose(1, 2)  # (B, s*s, C)
            return self.act(self.norm(tokens)), (s, s)
        if self.sr is None:
            return x.flatten(2).transpose(1, 2), (H, W)  # (B, N, C)
        r = self.sr_ratio
        # Zero-pad to multiples of R so that the border positions also reach a key.
        x = pad_to_multiple(x, r)  # (B, C, R*h, R*w)
        reduced = self.sr(x)  # (B, C, h, w)
        h, w = reduced.shape[-2:]
        return self.norm(reduced.flatten(2).transpose(1, 2)), (h, w)  # (B, h*w, C)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        B, C, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        # Projections of (B, N, C) tokens keep each head's features contiguous (stride 1),
        # which the fused kernel needs.
        q = self.q(tokens).view(B, H * W, self.heads, self.head_dim).transpose(1, 2)  # (B, h, N, d)
        reduced, grid = self._reduce(x)  # (B, N', C)
        kv = self.kv(reduced).view(B, -1, 2, self.heads, self.head_dim)  # (B, N', 2, h, d)
        k, v = kv.permute(2, 0, 3, 1, 4)  # (B, h, N', d) each
        p = self.attn_drop if self.training else 0.0
        out, weights = attention(q, k, v, dropout_p=p, need_weights=self.recording)  # (B, h, N, d)
        if weights is not None:
            self.keep_map(weights, kind="softmax", grid=grid)  # (B, heads, N, N')
        out = self.proj(out.transpose(1, 2).reshape(B, H * W, C))  # (B, N, C)
        out = self.proj_drop(out).transpose(1, 2).reshape(B, C, H, W)
        return x + out if self.residual else out

    def extra_repr(self) -> str:
        size = f"sr_ratio={self.sr_ratio}" if self.reduction == "conv" else f"pool_size={self.pool_size}"
        return f"channels={self.channels}, heads={self.heads}, reduction={self.reduction!r}, {size}"
