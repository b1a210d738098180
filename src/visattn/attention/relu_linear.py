"""ReLU linear attention with multi-scale tokens (LiteMLA) of EfficientViT.

Cai, Li, Hu, Gan and Han, "EfficientViT: Lightweight Multi-Scale Attention for High-Resolution
Dense Prediction", ICCV 2023, arXiv:2205.14756.

A 1x1 convolution makes q, k, v for every head; each extra scale aggregates them with a
depthwise ``s x s`` and a grouped 1x1 convolution (one group per head and per q/k/v), and
every scale's heads run ReLU linear attention
``out_i = sum_j (relu(q_i) . relu(k_j)) v_j / (relu(q_i) . sum_j relu(k_j) + eps)``
in ``O(N d²)``. A 1x1 convolution and a norm project the concatenated heads back to C.

Conventions: the channel layout (per head: d query, d key, d value channels) is the paper's,
so weights load unchanged. The normaliser is ``relu(q_i) . sum_j relu(k_j)``, which is what
the paper's code (and timm) obtain by padding v with a column of ones. ``eps`` defaults to
timm's 1e-5 (the authors' release uses 1e-15; the option reaches it). As a feature-map
module it adds its input by default (``residual=True``); LiteMLA returns the bare branch and
EfficientViT's block adds the input. The attention is evaluated in at least float32, as in
the paper's code.

Deviations: none from the paper. ``head_dim`` defaults to 32 (EfficientViT-B2/B3) and the
head count ``channels // head_dim`` is floored at 1, so C = 16 runs one 32-wide head.

Reference checked against: timm ``timm.models.efficientvit_mit.LiteMLA`` (same weights,
``residual=False``, within 1e-5, one and two extra scales).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .._checks import check_float, check_int
from ..registry import ATTENTION
from .base import AttentionModule


@ATTENTION.register("relu_linear")
class ReLULinearAttention(AttentionModule):
    """EfficientViT's lightweight multi-scale ReLU linear attention over positions.

    Args:
        channels: input and output width C.
        heads: number of heads per scale; ``max(1, channels // head_dim)`` when ``None``.
        head_dim: width d of each head's q, k and v.
        scales: kernel sizes (odd) of the extra multi-scale token branches; ``()`` for the
            single-scale variant.
        eps: added to the normaliser of every query (>= 0).
        bias: bias in the convolutions.
        kernel_layer: the similarity's feature map, called with no arguments (ReLU).
        norm_layer: norm after the output projection, called with the width; ``None`` for
            none.
        residual: add the input to the output.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``; recorded maps kind ``"softmax"``, one per
    scale (parts ``"scale0"`` for the 1x1 tokens, ``"scale1"``... for ``scales``):
    ``(B, heads, H*W, H*W)`` implied matrices
    ``A_ij = relu(q_i) . relu(k_j) / (sum_j relu(q_i) . relu(k_j) + eps)``, grid ``(H, W)``.
    A row sums to 1 up to eps, or to 0 for a query whose features ReLU sets all to zero (its
    output is then zero too).

    Example:
        >>> ReLULinearAttention(64, head_dim=16)(torch.randn(2, 64, 15, 9)).shape
        torch.Size([2, 64, 15, 9])
    """

    family = "linear"
    paper = "Cai et al. 2023, EfficientViT: Lightweight Multi-Scale Attention for Dense Prediction"
    complexity = "O(N)"

    def __init__(
        self,
        channels: int,
        *,
        heads: int | None = None,
        head_dim: int = 32,
        scales: Sequence[int] = (5,),
        eps: float = 1e-5,
        bias: bool = False,
        kernel_layer: Callable[[], nn.Module] = nn.ReLU,
        norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm2d,
        residual: bool = True,
    ) -> None:
        super().__init__(channels)
        self.head_dim = check_int("head_dim", head_dim)
        self.heads = max(1, channels // head_dim) if heads is None else check_int("heads", heads)
        scales = tuple(scales)
        for s in scales:
            if isinstance(s, bool) or not isinstance(s, int) or s < 1 or s % 2 == 0:
                raise ValueError(f"scales must be odd integers >= 1, got {scales!r}")
        self.scales = scales
        self.eps = check_float("eps", eps, low=0.0, high=1.0)
        self.residual = residual
        width = 3 * self.heads * head_dim  # q, k, v of every head
        self.qkv = nn.Conv2d(channels, width, 1, bias=bias)
        self.aggreg = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(width, width, s, padding=s // 2, groups=width, bias=bias),
                nn.Conv2d(width, width, 1, groups=3 * self.heads, bias=bias),
            )
            for s in scales
        )
        self.kernel = kernel_layer()
        self.proj = nn.Conv2d(self.heads * head_dim * (1 + len(scales)), channels, 1, bias=bias)
        self.norm = norm_layer(channels) if norm_layer is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        B, _, H, W = x.shape
        qkv = self.qkv(x)  # (B, 3*h*d, H, W)
        multi = torch.cat([qkv, *(branch(qkv) for branch in self.aggreg)], dim=1)  # (B, S*3*h*d, H, W)
        d = self.head_dim
        # Channels-first keeps the N positions contiguous: groups are the heads of all scales.
        multi = multi.reshape(B, -1, 3 * d, H * W)  # (B, G, 3d, N), G = scales x heads
        wide = torch.promote_types(x.dtype, torch.float32)  # sums over N: at least float32
        q, k, v = multi.to(wide).split(d, dim=2)  # (B, G, d, N) each
        q, k = self.kernel(q), self.kernel(k)
        if self.recording:
            scores = q.transpose(-2, -1) @ k  # (B, G, N, N)
            weights = scores / (scores.sum(-1, keepdim=True) + self.eps)
            for s, part in enumerate(weights.split(self.heads, dim=1)):
                self.keep_map(part, kind="softmax", grid=(H, W), part=f"scale{s}")  # (B, h, N, N)
            out = v @ weights.transpose(-2, -1)  # (B, G, d, N)
        else:
            kv = v @ k.transpose(-2, -1)  # (B, G, d_v, d_k): sum_j v_j k_j^T
            den = k.sum(-1, keepdim=True).transpose(-2, -1) @ q  # (B, G, 1, N)
            out = (kv @ q) / (den + self.eps)  # (B, G, d, N)
        out = out.to(x.dtype).reshape(B, -1, H, W)  # (B, G*d, H, W)
        out = self.norm(self.proj(out))  # (B, C, H, W)
        return x + out if self.residual else out

    def extra_repr(self) -> str:
        return f"channels={self.channels}, heads={self.heads}, head_dim={self.head_dim}, scales={self.scales}"
