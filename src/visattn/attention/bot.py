"""Multi-head self-attention with 2-D relative position logits (BoTNet's MHSA layer).

Srinivas et al., CVPR 2021, "Bottleneck Transformers for Visual Recognition",
arXiv:2101.11605. Relative logits ``q . (r_h[dy] + r_w[dx])`` added to the content logits
``q . k`` as in Bello et al. 2019 (arXiv:1904.09925) and Ramachandran et al. 2019
(arXiv:1906.05909), both scaled by ``1/sqrt(d)`` as in those papers and BoTNet's reference code.

Deviations from the paper:
- The relative tables cover offsets up to ``max_distance`` and clip larger ones (Shaw et al.
  2018, arXiv:1803.02155), so the module runs at any H x W; it equals the paper's unclipped
  form whenever ``|dy|, |dx| <= max_distance`` (H, W <= max_distance + 1).
- ``residual=True`` (default) adds the input: the paper's layer replaces a 3x3 convolution
  inside a residual bottleneck, a drop-in module carries its own shortcut. ``residual=False``
  gives the paper's layer alone. ``proj=True`` adds an output projection (the paper has none).
- No stride-2 average pooling (the output keeps the input size).

Reference checked against: timm ``BottleneckAttn`` (feat_size fixed at construction) with its
relative tables copied to the centre of ours. timm adds the position logits *unscaled* by
default; ``scale_pos=False`` reproduces that, ``scale_pos=True`` (default) equals timm's
``scale_pos_embed=True``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import check_int
from ..functional import Relative, attention
from ..layout import relative_index
from ..registry import ATTENTION
from .base import AttentionModule
from .parts import check_heads


@ATTENTION.register("bot")
class BottleneckSelfAttention(AttentionModule):
    """BoTNet's multi-head self-attention over the H*W positions with 2-D relative logits.

    ``logits_ij = (q_i . k_j + q_i . r_h[y_j - y_i] + q_i . r_w[x_j - x_i]) / sqrt(d)``; the
    output is the concatenation of the heads (optionally projected), plus the input.

    Args:
        channels: input and output width C.
        heads: number of heads; must divide ``channels`` (BoTNet uses 4).
        max_distance: largest row / column offset with its own embedding; larger offsets
            share the embedding of ``+-max_distance``.
        qkv_bias: bias in the Q/K/V projection (BoTNet: none).
        scale_pos: scale the position logits by ``1/sqrt(d)`` together with the content
            logits (paper); ``False`` adds them unscaled (timm's default).
        proj: output projection after the heads are concatenated.
        residual: add the input to the output.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``; recorded map ``(B, heads, H*W, H*W)``.

    Example:
        >>> BottleneckSelfAttention(64)(torch.randn(2, 64, 14, 9)).shape
        torch.Size([2, 64, 14, 9])
    """

    family = "global"
    paper = "Srinivas et al. 2021, Bottleneck Transformers for Visual Recognition"
    complexity = "O(N²·(d+H+W))"

    def __init__(
        self,
        channels: int,
        *,
        heads: int = 4,
        max_distance: int = 31,
        qkv_bias: bool = False,
        scale_pos: bool = True,
        proj: bool = False,
        residual: bool = True,
    ) -> None:
        super().__init__(channels)
        self.heads = check_heads(channels, heads)
        self.head_dim = channels // heads
        self.max_distance = check_int("max_distance", max_distance, minimum=0)
        self.scale_pos = scale_pos
        self.residual = residual
        self.qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        # One table per axis, shared by the heads, as in BoTNet and timm.
        self.rel_h = nn.Parameter(torch.randn(2 * max_distance + 1, self.head_dim) * self.head_dim**-0.5)
        self.rel_w = nn.Parameter(torch.randn(2 * max_distance + 1, self.head_dim) * self.head_dim**-0.5)
        self.proj = nn.Linear(channels, channels) if proj else nn.Identity()

    def relative_logits(self, q: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Unscaled ``q_i . r_h[y - y_i]`` for every key row y and ``q_i . r_w[x - x_i]`` for
        every key column x: ``(B, heads, N, H)`` and ``(B, heads, N, W)``."""
        B, n = q.shape[:2]
        q = q.reshape(B, n, height, width, self.head_dim)  # (B, heads, H, W, d)
        emb_h = self.rel_h[relative_index(height, self.max_distance, q.device)]  # (Hq, Hk, d)
        emb_w = self.rel_w[relative_index(width, self.max_distance, q.device)]  # (Wq, Wk, d)
        by_row = torch.einsum("bnyxd,ykd->bnyxk", q, emb_h)  # (B, heads, H, W, Hk)
        by_col = torch.einsum("bnyxd,xkd->bnyxk", q, emb_w)  # (B, heads, H, W, Wk)
        return by_row.reshape(B, n, height * width, height), by_col.reshape(B, n, height * width, width)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        B, C, H, W = x.shape
        N, d = H * W, self.head_dim
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        # A permute keeps the head dimension's stride at 1, which the fused kernel needs.
        q, k, v = self.qkv(tokens).view(B, N, 3, self.heads, d).permute(2, 0, 3, 1, 4)  # (B, h, N, d)
        scale = d**-0.5
        by_row, by_col = self.relative_logits(q, H, W)  # (B, h, N, H), (B, h, N, W), unscaled
        if self.scale_pos:  # the paper scales them with the content logits, timm does not
            by_row, by_col = by_row * scale, by_col * scale
        out, weights = attention(  # (B, h, N, d)
            q, k, v, rel=Relative(by_row, by_col), scale=scale, need_weights=self.recording
        )
        if weights is not None:
            self.keep_map(weights, kind="softmax", grid=(H, W))  # (B, heads, N, N)
        out = self.proj(out.transpose(1, 2).reshape(B, N, C))  # (B, N, C), heads concatenated
        out = out.transpose(1, 2).reshape(B, C, H, W)
        return x + out if self.residual else out

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, heads={self.heads}, max_distance={self.max_distance}, "
            f"scale_pos={self.scale_pos}, residual={self.residual}"
        )
