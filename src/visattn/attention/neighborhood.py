"""Neighborhood attention (NA / DiNA).

Hassani et al., CVPR 2023, "Neighborhood Attention Transformer", arXiv:2204.07143; dilation
as in Hassani and Shi 2022, "Dilated Neighborhood Attention Transformer", arXiv:2209.15001.
Each query attends to the ``kernel_size x kernel_size`` positions around it (every
``dilation``-th position), the neighbourhood shifted inward at the borders so that every
query keeps ``kernel_size**2`` neighbours, with a learned relative position bias of
``(2k - 1) x (2k - 1)`` entries per head added to the logits, as in NAT.

Deviations: where an axis (or, with dilation, one of its dilation groups) holds fewer than
``kernel_size`` positions, the neighbourhood is that whole axis (group); NATTEN's module
instead zero-pads such inputs to ``kernel_size * dilation`` and lets the padding be attended.
Scale ``head_dim ** -0.5``, Q/K/V and output projections as in NATTEN's module. The module
adds its input by default (``residual=True``): ``y = x + proj(attn(x))``.

Reference checked against: NATTEN has no CPU kernels, so the tests compare with a masked full
attention written independently in float64 (boolean neighbourhood mask built from NATTEN's
window-start rule, bias added by hand), with and without dilation and at sizes smaller than
the kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import check_float, check_int, check_odd
from ..functional import attention, grid_index, neighborhood_index
from ..registry import ATTENTION
from .base import AttentionModule
from .parts import head_width


@ATTENTION.register("neighborhood")
class NeighborhoodAttention(AttentionModule):
    """Multi-head self-attention of every position over its k x k (dilated) neighbourhood.

    Keys and values of each neighbourhood are gathered (memory O(N k² d)); no N x N tensor
    is formed on either path.

    Args:
        channels: input and output width C.
        kernel_size: odd side of the neighbourhood (7 in the paper).
        dilation: spacing between neighbours (1: plain NA; >1: DiNA).
        heads: number of heads.
        head_dim: width of each head; ``channels // heads`` when ``None``.
        qkv_bias: bias in the Q/K/V projection.
        attn_drop: dropout on the attention weights while training.
        proj_drop: dropout after the output projection while training.
        residual: add the input to the output.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)`` for any H, W; recorded map ``"window"``
    ``(B, heads, H*W, kernel_size**2)`` whose keys are each query's neighbours (``-1`` for
    the empty slots of axes shorter than the kernel).

    Example:
        >>> NeighborhoodAttention(32, kernel_size=7)(torch.randn(2, 32, 15, 9)).shape
        torch.Size([2, 32, 15, 9])
    """

    family = "local"
    paper = "Hassani et al. 2023, Neighborhood Attention Transformer"
    complexity = "O(N·k²)"

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int = 7,
        dilation: int = 1,
        heads: int = 4,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        residual: bool = True,
    ) -> None:
        super().__init__(channels)
        self.kernel_size = check_odd("kernel_size", kernel_size)
        self.dilation = check_int("dilation", dilation)
        self.head_dim = head_width(channels, heads, head_dim)
        self.heads = heads
        self.attn_drop = check_float("attn_drop", attn_drop, low=0.0, high=1.0)
        self.residual = residual
        inner = heads * self.head_dim
        self.qkv = nn.Linear(channels, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, channels)
        self.proj_drop = nn.Dropout(check_float("proj_drop", proj_drop, low=0.0, high=1.0))
        # rpb[h, dy + k - 1, dx + k - 1]: offsets counted in steps of the dilation.
        self.rpb = nn.Parameter(torch.zeros(heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
        nn.init.trunc_normal_(self.rpb, std=0.02, a=-2.0, b=2.0)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        C, H, W = x.shape[1:]
        n, heads, d = H * W, self.heads, self.head_dim
        tokens = x.permute(0, 2, 3, 1).reshape(-1, n, C)  # (B, N, C)
        qkv = self.qkv(tokens).view(-1, n, 3, heads, d).permute(2, 0, 3, 1, 4)  # (3, B, heads, N, d)
        q, k, v = qkv.unbind(0)
        rows, rel_h = neighborhood_index(H, self.kernel_size, self.dilation, device=x.device)  # (H, k)
        cols, rel_w = neighborhood_index(W, self.kernel_size, self.dilation, device=x.device)  # (W, k)
        keys = grid_index(rows, cols, W)  # (N, K), -1 for empty slots
        take = keys.clamp(min=0)  # empty slots read position 0 and are masked below
        k_nb, v_nb = k[:, :, take], v[:, :, take]  # (B, heads, N, K, d)
        bias = self.rpb[:, rel_h[:, None, :, None], rel_w[None, :, None, :]]  # (heads, H, W, k, k)
        bias = bias.reshape(heads, n, -1).masked_fill(keys < 0, float("-inf"))  # (heads, N, K)
        p = self.attn_drop if self.training else 0.0
        out, weights = attention(  # (B, heads, N, 1, d): one query against its K neighbours
            q.unsqueeze(3),
            k_nb,
            v_nb,
            mask=bias.unsqueeze(2),
            dropout_p=p,
            need_weights=self.recording,
        )
        if weights is not None:
            self.keep_map(weights.squeeze(3), kind="window", grid=(H, W), keys=keys)  # (B, heads, N, K)
        out = out.squeeze(3).transpose(1, 2).reshape(-1, n, heads * d)  # (B, N, inner)
        out = self.proj_drop(self.proj(out))  # (B, N, C)
        out = out.transpose(1, 2).reshape(-1, C, H, W)  # (B, C, H, W)
        return x + out if self.residual else out

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, kernel_size={self.kernel_size}, dilation={self.dilation}, "
            f"heads={self.heads}, head_dim={self.head_dim}"
        )
