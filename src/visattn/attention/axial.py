"""Position-sensitive axial attention: multi-head attention along the height axis, then along
the width axis.

Wang et al., ECCV 2020, "Axial-DeepLab: Stand-Alone Axial-Attention for Panoptic
Segmentation", arXiv:2003.07853. Along one axis (eq. 4):
``y_o = sum_p softmax_p(q_o . k_p + q_o . r^q_{p-o} + k_p . r^k_{p-o}) (v_p + r^v_{p-o})``,
with the span the whole axis (global axial attention) and the relative tables shared by the
heads, as in the paper's released code.

Deviations from the paper:
- The relative tables cover offsets up to ``max_distance`` and clip larger ones (Shaw et al.
  2018, arXiv:1803.02155), so any H x W works; equal to the unclipped form whenever the axis
  is at most ``max_distance + 1`` long.
- The logits are scaled by ``1/sqrt(d)``: eq. 4 has no scale, the released code normalises
  each logit term with BatchNorm instead, which would rule out the fused kernel.
- Query, key and value heads have the same width (the released code halves q and k).
- ``residual=True`` (default) adds the input: the paper's layers sit inside a residual
  bottleneck, a drop-in module carries its own shortcut. ``pos="none"`` drops the position
  terms.

Kernels: each axis is attention over (B*W, heads, H, d) and (B*H, heads, W, d) lines. With the
position terms, the logits ``q . r^q + k . r^k`` go to the core as a learnable bias and the
weights come back inside the autograd graph, because the r^v term is a weighted sum of the
relative table; without them the core chooses its kernel freely.

Reference checked against: no installable reference; two masked full attentions (column
mask, then row mask) with the relative terms, in float64, in the tests.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_int
from ..functional import attention
from ..layout import relative_index
from ..registry import ATTENTION
from .base import AttentionModule
from .parts import check_heads


class AxialLayer(nn.Module):
    """Multi-head position-sensitive attention along the second axis of ``(B', L, C)`` lines."""

    def __init__(self, channels: int, heads: int, max_distance: int, qkv_bias: bool, relative: bool) -> None:
        super().__init__()
        self.heads, self.head_dim, self.max_distance = heads, channels // heads, max_distance
        self.qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        shape = (3, 2 * max_distance + 1, self.head_dim)  # r^q, r^k, r^v
        self.rel = nn.Parameter(torch.randn(shape) * self.head_dim**-0.5) if relative else None

    def forward(self, lines: Tensor, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        """``(B', L, C) -> (B', L, C)`` and the ``(B', heads, L, L)`` weights if asked for."""
        Bp, L, C = lines.shape
        d = self.head_dim
        # A permute keeps the head dimension's stride at 1, which the fused kernel needs.
        q, k, v = self.qkv(lines).view(Bp, L, 3, self.heads, d).permute(2, 0, 3, 1, 4)  # (B', h, L, d)
        scale = d**-0.5
        if self.rel is None:
            out, weights = attention(q, k, v, scale=scale, need_weights=need_weights)  # (B', h, L, d)
        else:
            r_q, r_k, r_v = self.rel[:, relative_index(L, self.max_distance, lines.device)]  # (L, L, d)
            bias = torch.einsum("bnod,opd->bnop", q, r_q) + torch.einsum("bnpd,opd->bnop", k, r_k)
            # The r^v term needs the weights themselves: the core's explicit kernel returns
            # them inside the graph.
            out, weights = attention(q, k, v, bias=bias * scale, scale=scale, need_weights=True)
            out = out + torch.einsum("bnop,opd->bnod", weights, r_v)  # the v + r^v term
        out = out.transpose(1, 2).reshape(Bp, L, C)  # (B', L, C), heads concatenated
        return out, weights if need_weights else None


@ATTENTION.register("axial")
class AxialAttention2d(AttentionModule):
    """Axial-DeepLab's position-sensitive axial attention: height axis, then width axis.

    Args:
        channels: input and output width C.
        heads: number of heads; must divide ``channels`` (paper: 8).
        pos: ``"relative"`` (the paper's r^q, r^k, r^v terms) or ``"none"``.
        max_distance: largest offset along an axis with its own embedding; larger offsets
            share the embedding of ``+-max_distance``.
        qkv_bias: bias in the Q/K/V projections.
        residual: add the input to the output.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``; recorded ``"window"`` maps ``height``
    ``(B, heads, H*W, H)`` (slot y' = key (y', x)) and ``width`` ``(B, heads, H*W, W)``
    (slot x' = key (y, x')).

    Example:
        >>> AxialAttention2d(64)(torch.randn(2, 64, 14, 9)).shape
        torch.Size([2, 64, 14, 9])
    """

    family = "global"
    paper = "Wang et al. 2020, Axial-DeepLab: Stand-Alone Axial-Attention for Panoptic Segmentation"
    complexity = "O(N·(H+W))"

    def __init__(
        self,
        channels: int,
        *,
        heads: int = 8,
        pos: str = "relative",
        max_distance: int = 31,
        qkv_bias: bool = False,
        residual: bool = True,
    ) -> None:
        super().__init__(channels)
        self.heads = check_heads(channels, heads)
        self.pos = check_choice("pos", pos, ("relative", "none"))
        self.max_distance = check_int("max_distance", max_distance, minimum=0)
        self.residual = residual
        relative = pos == "relative"
        self.height = AxialLayer(channels, heads, max_distance, qkv_bias, relative)
        self.width = AxialLayer(channels, heads, max_distance, qkv_bias, relative)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        B, C, H, W = x.shape
        cols = x.permute(0, 3, 2, 1).reshape(B * W, H, C)  # (B*W, H, C): one line per column
        out, w_h = self.height(cols, self.recording)
        rows = out.view(B, W, H, C).transpose(1, 2).reshape(B * H, W, C)  # (B*H, W, C): per row
        out, w_w = self.width(rows, self.recording)
        out = out.view(B, H, W, C).permute(0, 3, 1, 2)  # (B, C, H, W)
        if w_h is not None and w_w is not None:
            ys, xs = torch.arange(H, device=x.device), torch.arange(W, device=x.device)
            w_h = w_h.view(B, W, self.heads, H, H).permute(0, 2, 3, 1, 4)  # (B, heads, H, W, Hk)
            keys_h = (ys[None, None, :] * W + xs[None, :, None]).expand(H, W, H)  # (H, W, Hk)
            self.keep_map(
                w_h.reshape(B, self.heads, H * W, H),
                kind="window",
                grid=(H, W),
                keys=keys_h.reshape(H * W, H),
                part="height",
            )
            w_w = w_w.view(B, H, self.heads, W, W).transpose(1, 2)  # (B, heads, H, W, Wk)
            keys_w = (ys[:, None, None] * W + xs[None, None, :]).expand(H, W, W)  # (H, W, Wk)
            self.keep_map(
                w_w.reshape(B, self.heads, H * W, W),
                kind="window",
                grid=(H, W),
                keys=keys_w.reshape(H * W, W),
                part="width",
            )
        return x + out if self.residual else out

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, heads={self.heads}, pos={self.pos!r}, "
            f"max_distance={self.max_distance}, residual={self.residual}"
        )
