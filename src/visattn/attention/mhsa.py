"""Multi-head self-attention over tokens and over the positions of a feature map.

Vaswani et al., NeurIPS 2017, "Attention Is All You Need", arXiv:1706.03762; applied to the
H*W positions of a CNN feature map as in Wang et al. 2018 (non-local) and Srinivas et al.
2021 (BoTNet). Reference checked against: ``torch.nn.MultiheadAttention``.

Deviations: position information is a fixed 2-D sine-cosine encoding added to the queries
and keys only (Carion et al. 2020, DETR), not to the values, so that the module works at any
H x W without a table sized at construction; the encoding's projection is computed once per
grid instead of once per sample. ``pos="conv"`` uses a depthwise 3x3 convolution instead
(conditional position encoding, Chu et al. 2023, arXiv:2102.10882).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_choice, check_float, check_int
from ..functional import attention, sincos_2d
from ..registry import ATTENTION
from .base import AttentionModule


class SelfAttention(AttentionModule):
    """Single-head self-attention over tokens with separate Q/K/V projections.

    The layer of the classic tutorial, with its bugs fixed: it attends across the tokens
    (the second axis) and takes the fused kernel unless its map is being recorded.

    Args:
        dim: token width C.
        qkv_bias: bias in the three projections.
        dropout: dropout on the attention weights while training.

    Shapes: ``(B, N, C) -> (B, N, C)``; recorded map ``(B, 1, N, N)``.

    Example:
        >>> SelfAttention(64)(torch.randn(2, 49, 64)).shape
        torch.Size([2, 49, 64])
    """

    family = "token"
    paper = "Vaswani et al. 2017, Attention Is All You Need"
    complexity = "O(N²)"
    layout = "token"

    def __init__(self, dim: int, *, qkv_bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__(dim)
        self.dropout = check_float("dropout", dropout, low=0.0, high=1.0)
        self.query = nn.Linear(dim, dim, bias=qkv_bias)
        self.key = nn.Linear(dim, dim, bias=qkv_bias)
        self.value = nn.Linear(dim, dim, bias=qkv_bias)

    def forward(self, x: Tensor, *, mask: Tensor | None = None) -> Tensor:
        """``mask``: ``(N, N)`` or ``(B, N, N)``, as in ``visattn.attention``."""
        self.check_input(x)
        q, k, v = self.query(x), self.key(x), self.value(x)  # (B, N, C) each
        if mask is not None:
            mask = mask.unsqueeze(-3)  # (..., 1, N, N): one head
        p = self.dropout if self.training else 0.0
        out, weights = attention(  # (B, 1, N, C)
            q.unsqueeze(1),
            k.unsqueeze(1),
            v.unsqueeze(1),
            mask=mask,
            dropout_p=p,
            need_weights=self.recording,
        )
        if weights is not None:
            self.keep_map(weights, kind="softmax")  # (B, 1, N, N)
        return out.squeeze(1)


@ATTENTION.register("mhsa")
class MultiHeadSelfAttention2d(AttentionModule):
    """Multi-head self-attention across the H*W positions of a feature map, with a residual.

    ``y = x + proj(attention(q, k, v))`` where q, k, v are linear projections of each
    position's C features; q and k also carry the 2-D position.

    Args:
        channels: input and output width C.
        heads: number of heads.
        head_dim: width of each head; ``channels // heads`` when ``None``.
        qkv_bias: bias in the Q/K/V projection.
        pos: ``"sine"`` (fixed 2-D encoding on q and k), ``"conv"`` (depthwise 3x3
            convolution added to the input) or ``"none"``.
        attn_drop: dropout on the attention weights while training.
        proj_drop: dropout after the output projection while training.
        residual: add the input to the output.
        norm_layer: optional norm applied to the tokens before the projection, called
            with the width (e.g. ``nn.LayerNorm``).

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``; recorded map ``(B, heads, H*W, H*W)``.

    Example:
        >>> MultiHeadSelfAttention2d(64, heads=4)(torch.randn(2, 64, 15, 15)).shape
        torch.Size([2, 64, 15, 15])
    """

    family = "global"
    paper = "Vaswani et al. 2017, Attention Is All You Need (over 2-D positions)"
    complexity = "O(N²)"

    def __init__(
        self,
        channels: int,
        *,
        heads: int = 4,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        pos: str = "sine",
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        residual: bool = True,
        norm_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__(channels)
        self.heads = check_int("heads", heads)
        if head_dim is None:
            if channels % heads:
                raise ValueError(
                    f"heads must divide channels ({channels}) when head_dim is not given, got {heads}"
                )
            head_dim = channels // heads
        self.head_dim = check_int("head_dim", head_dim)
        self.pos = check_choice("pos", pos, ("sine", "conv", "none"))
        self.attn_drop = check_float("attn_drop", attn_drop, low=0.0, high=1.0)
        self.residual = residual
        inner = heads * head_dim
        self.norm = norm_layer(channels) if norm_layer is not None else nn.Identity()
        self.pos_conv = (
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels) if pos == "conv" else None
        )
        self.qkv = nn.Linear(channels, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, channels)
        self.proj_drop = nn.Dropout(check_float("proj_drop", proj_drop, low=0.0, high=1.0))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        B, C, H, W = x.shape
        inner = self.heads * self.head_dim
        if self.pos_conv is not None:
            x = x + self.pos_conv(x)
        tokens = self.norm(x.flatten(2).transpose(1, 2))  # (B, N, C)
        qkv = self.qkv(tokens)  # (B, N, 3 * inner)
        if self.pos == "sine":
            # Position enters q and k only: project the encoding once for the whole batch.
            enc = sincos_2d(H, W, C, device=x.device, dtype=tokens.dtype)  # (N, C)
            pos_qk = F.linear(enc, self.qkv.weight[: 2 * inner])  # (N, 2 * inner)
            qkv = qkv + F.pad(pos_qk, (0, inner))
        # A permute keeps the head dimension's stride at 1, which the fused kernel needs.
        q, k, v = qkv.view(B, H * W, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        p = self.attn_drop if self.training else 0.0
        out, weights = attention(q, k, v, dropout_p=p, need_weights=self.recording)  # (B, h, N, d)
        if weights is not None:
            self.keep_map(weights, kind="softmax", grid=(H, W))  # (B, heads, N, N)
        out = self.proj(out.transpose(1, 2).reshape(B, H * W, inner))  # (B, N, C)
        out = self.proj_drop(out).transpose(1, 2).reshape(B, C, H, W)
        return x + out if self.residual else out

    def extra_repr(self) -> str:
        return f"channels={self.channels}, heads={self.heads}, head_dim={self.head_dim}, pos={self.pos!r}"
