"""Cross-covariance attention (XCA) of XCiT: attention across channels instead of positions.

El-Nouby, Touvron, Caron, Bojanowski, Douze, Joulin, Laptev, Neverova, Synnaeve, Verbeek and
Jegou, "XCiT: Cross-Covariance Image Transformers", NeurIPS 2021, arXiv:2106.09681.

Each head's queries and keys are L2-normalised along the N positions, and a softmax over the
d x d cross-covariance ``q k^T``, scaled by a learnable per-head temperature, mixes the value
channels: ``out = softmax(tau * q_hat k_hat^T) v`` with q, k, v of shape (d, N) per head. The
attention matrix is d x d, so the cost is linear in N.

Conventions: the q/k/v and output projections act on each position's C features (1x1
convolutions here, linear layers in XCiT: the weights are the same numbers); as a feature-map
module it adds its input by default (``residual=True``); XCiT's ``XCA`` returns the bare
branch and its block adds ``gamma * XCA(norm(x))``. Default: 4 heads (XCiT uses 8 heads of 48
channels; at the 16-64 channels served here 4 heads keep each head's d x d map at least 4 wide).

Deviations: none.

Reference checked against: timm ``timm.models.xcit.XCA`` on the flattened tokens (same weights,
``residual=False``, within 1e-5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_float
from ..functional import attention
from ..registry import ATTENTION
from .base import AttentionModule
from .parts import check_heads


@ATTENTION.register("xca")
class CrossCovarianceAttention(AttentionModule):
    """XCiT's cross-covariance attention over the channels of a feature map.

    Args:
        channels: input and output width C.
        heads: number of heads; must divide C. Each head attends over its d = C / heads
            channels.
        qkv_bias: bias in the q/k/v projection.
        attn_drop: dropout on the attention weights while training.
        proj_drop: dropout after the output projection while training.
        residual: add the input to the output.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``; recorded map kind ``"softmax"``
    ``(B, heads, d, d)`` with grid ``None`` (the keys are channels).

    Example:
        >>> CrossCovarianceAttention(64, heads=8)(torch.randn(2, 64, 33, 17)).shape
        torch.Size([2, 64, 33, 17])
    """

    family = "linear"
    paper = "El-Nouby et al. 2021, XCiT: Cross-Covariance Image Transformers"
    complexity = "O(N)"

    def __init__(
        self,
        channels: int,
        *,
        heads: int = 4,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        residual: bool = True,
    ) -> None:
        super().__init__(channels)
        self.heads = check_heads(channels, heads)
        self.head_dim = channels // heads
        self.attn_drop = check_float("attn_drop", attn_drop, low=0.0, high=1.0)
        self.residual = residual
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=qkv_bias)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.proj_drop = nn.Dropout(check_float("proj_drop", proj_drop, low=0.0, high=1.0))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        B, C, H, W = x.shape
        # Here the "tokens" are channels and the features are the N positions: the
        # channels-first layout already has the positions contiguous, as the kernel wants.
        qkv = self.qkv(x).reshape(B, 3, self.heads, self.head_dim, H * W)  # (B, 3, h, d, N)
        q, k, v = qkv.unbind(1)  # (B, h, d, N) each
        q = F.normalize(q, dim=-1) * self.temperature  # unit norm over positions, then tau
        k = F.normalize(k, dim=-1)
        p = self.attn_drop if self.training else 0.0
        out, weights = attention(q, k, v, dropout_p=p, scale=1.0, need_weights=self.recording)
        if weights is not None:
            self.keep_map(weights, kind="softmax")  # (B, heads, d, d)
        out = self.proj(out.reshape(B, C, H, W))  # (B, h, d, N) -> (B, C, H, W)
        out = self.proj_drop(out)
        return x + out if self.residual else out

    def extra_repr(self) -> str:
        return f"channels={self.channels}, heads={self.heads}"
