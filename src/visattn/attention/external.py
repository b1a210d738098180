"""External attention: attention to two small learnable memories shared by all samples.

Guo et al., TPAMI 2022, "Beyond Self-attention: External Attention using Two Linear Layers
for Visual Tasks", arXiv:2105.02358. For the (N, C) features F of one sample:
``A = DoubleNorm(F M_k^T)``, ``out = A M_v``, where M_k, M_v are (S, C) memories (S = 64) and
DoubleNorm is a softmax over the N positions followed by an l1 normalisation over the S memory
units (Algorithm 1). The multi-head form (Algorithm 2) projects F, splits it into heads that
share one pair of (S, C/heads) memories, and projects the concatenated heads.

Deviations from the paper:
- Drop-in form ``y = x + out``: EANet's head wraps the unit in 1x1 convolutions, a BatchNorm
  and a ReLU after the residual; those are left to the host network.
- The l1 denominator is clamped at the dtype's smallest normal number (the released code
  adds 1e-9), which changes nothing unless every unit's weight underflows.

Reference checked against: no installable reference; a float64 re-implementation of
Algorithms 1 and 2 in the tests.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import check_int
from ..registry import ATTENTION
from .base import AttentionModule
from .parts import check_heads


@ATTENTION.register("external")
class ExternalAttention(AttentionModule):
    """External attention with double normalisation, plus the input.

    Args:
        channels: input and output width C.
        memory_units: number of memory units S (paper: 64).
        heads: 1 for Algorithm 1 (no projections); more for Algorithm 2 (input and output
            projections, memories of width ``channels // heads`` shared by the heads).
        residual: add the input to the output.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``; recorded map ``(B, heads, H*W, S)``: each
    position's weights over the memory units after double normalisation (rows sum to 1).

    Example:
        >>> ExternalAttention(64)(torch.randn(2, 64, 14, 9)).shape
        torch.Size([2, 64, 14, 9])
    """

    family = "global"
    paper = "Guo et al. 2022, Beyond Self-attention: External Attention using Two Linear Layers"
    complexity = "O(N)"

    def __init__(
        self, channels: int, *, memory_units: int = 64, heads: int = 1, residual: bool = True
    ) -> None:
        super().__init__(channels)
        self.memory_units = check_int("memory_units", memory_units)
        self.heads = check_heads(channels, heads)
        self.residual = residual
        width = channels // heads
        self.query = nn.Linear(channels, channels) if heads > 1 else nn.Identity()
        self.memory_key = nn.Linear(width, memory_units, bias=False)  # M_k
        self.memory_value = nn.Linear(memory_units, width, bias=False)  # M_v
        self.proj = nn.Linear(channels, channels) if heads > 1 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        B, C, H, W = x.shape
        N = H * W
        feats = self.query(x.flatten(2).transpose(1, 2))  # (B, N, C)
        feats = feats.reshape(B, N, self.heads, C // self.heads).transpose(1, 2)  # (B, heads, N, C/h)
        logits = self.memory_key(feats)  # (B, heads, N, S)
        # Double normalisation: softmax over the positions, then l1 over the memory units.
        attn = logits.softmax(dim=-2)
        attn = attn / attn.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(attn.dtype).tiny)
        self.keep_map(attn, kind="softmax")  # (B, heads, N, S): keys are memory units
        out = self.memory_value(attn)  # (B, heads, N, C/h)
        out = self.proj(out.transpose(1, 2).reshape(B, N, C))  # (B, N, C), heads concatenated
        out = out.transpose(1, 2).reshape(B, C, H, W)
        return x + out if self.residual else out

    def extra_repr(self) -> str:
        return f"channels={self.channels}, memory_units={self.memory_units}, heads={self.heads}"
