"""Halo attention (HaloNet).

Vaswani et al., CVPR 2021, "Scaling Local Self-Attention for Parameter Efficient Visual
Backbones", arXiv:2103.12731. The map is cut into non-overlapping ``block_size`` squares;
the queries of each block attend to the keys of the block grown by ``halo_size`` on every
side, with relative position logits ``q . (r_dy + r_dx)`` as in BoTNet (Srinivas et al.
2021) and no output projection (HaloNet's block follows the layer with a 1x1 convolution).

Deviations: maps whose sides are not multiples of the block are zero-padded at the bottom
and right and cropped back, and every key outside the map (halo beyond the border or block
padding) is masked out. timm's ``HaloAttn`` requires multiples of the block and attends to
its zero-padded halo keys (zero keys and values that still get weight through the position
logits); ``mask_padding=False`` does the same. The position logits are scaled with the
content logits (``softmax((q.k + q.r) / sqrt(d))``, the BoTNet reference code, which scales q
before both); timm's default adds them unscaled, reachable with ``scale_pos_logits=False``.
The relative tables hold the ``2 (b + h) - 1`` offsets that occur; timm's hold
``2 (b + 2h) - 1`` rows of which the first ``2h`` are never read. timm's ``feat_size``
argument is unused there, and nothing here depends on the map size at construction. The
module adds its input by default (``residual=True``): ``y = x + attn(x)``.

Reference checked against: timm ``timm/layers/halo_attn.py`` ``HaloAttn`` (both scalings, with
``mask_padding=False``, at multiples of the block) and a masked full attention in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_float, check_int
from ..functional import Relative, attention
from ..layout import grid_index, halo_index, inverse_index, rows_on_path, window_partition, window_reverse
from ..registry import ATTENTION
from .base import AttentionModule
from .parts import check_heads, head_width, pad_to_multiple, round_up


@ATTENTION.register("halo")
class HaloAttention(AttentionModule):
    """Blocked local self-attention: each ``b x b`` block attends to its ``(b + 2h)²`` window.

    Args:
        channels: input and output width C (also the width of the values).
        block_size: side b of the query blocks (8 in the paper).
        halo_size: halo h added around each block for the keys (3 in the paper).
        heads: number of heads; must divide ``channels`` (8 in the paper).
        head_dim: width of each query/key head; ``channels // heads`` when ``None``.
        qkv_bias: bias in the Q/K/V projections.
        scale_pos_logits: scale the position logits by ``head_dim ** -0.5`` with the
            content logits (paper, BoTNet); ``False`` adds them unscaled (timm's default).
        mask_padding: give keys outside the map no weight; ``False`` attends to them as
            zero keys and values, as timm does.
        attn_drop: dropout on the attention weights while training.
        residual: add the input to the output.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)`` for any H, W; recorded map ``"window"``
    ``(B, heads, H*W, (b + 2h)**2)`` whose keys are each position's window slots (``-1``
    outside the map).

    Example:
        >>> HaloAttention(32, block_size=8, halo_size=3)(torch.randn(2, 32, 15, 9)).shape
        torch.Size([2, 32, 15, 9])
    """

    family = "local"
    paper = "Vaswani et al. 2021, Scaling Local Self-Attention for Parameter Efficient Visual Backbones"
    complexity = "O(N·(b+2h)²)"

    def __init__(
        self,
        channels: int,
        *,
        block_size: int = 8,
        halo_size: int = 3,
        heads: int = 8,
        head_dim: int | None = None,
        qkv_bias: bool = False,
        scale_pos_logits: bool = True,
        mask_padding: bool = True,
        attn_drop: float = 0.0,
        residual: bool = True,
    ) -> None:
        super().__init__(channels)
        self.block_size = check_int("block_size", block_size)
        self.halo_size = check_int("halo_size", halo_size, minimum=0)
        self.heads = check_heads(channels, heads)
        self.head_dim = head_width(channels, heads, head_dim)
        self.scale = self.head_dim**-0.5
        self.scale_pos_logits = scale_pos_logits
        self.mask_padding = mask_padding
        self.attn_drop = check_float("attn_drop", attn_drop, low=0.0, high=1.0)
        self.residual = residual
        self.q = nn.Linear(channels, heads * self.head_dim, bias=qkv_bias)
        self.kv = nn.Linear(channels, heads * self.head_dim + channels, bias=qkv_bias)  # [k | v]
        # Key minus query offsets along one axis span [-(b + h - 1), b + h - 1].
        offsets = 2 * (block_size + halo_size) - 1
        self.rel_height = nn.Parameter(torch.zeros(offsets, self.head_dim))
        self.rel_width = nn.Parameter(torch.zeros(offsets, self.head_dim))
        for table in (self.rel_height, self.rel_width):
            nn.init.trunc_normal_(table, std=self.scale)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        B, C, H, W = x.shape
        b, heads, d = self.block_size, self.heads, self.head_dim
        Hp, Wp = round_up(H, b), round_up(W, b)
        tokens = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        q = pad_to_multiple(self.q(tokens), b, channels_last=True)  # (B, Hp, Wp, heads*d)
        q = window_partition(q, (b, b))  # (B, nBlk, b*b, heads*d)
        n_blk = q.shape[1]
        q = q.view(-1, n_blk, b * b, heads, d).permute(0, 3, 1, 2, 4)  # (B, heads, nBlk, b*b, d)
        # Each block's window, gathered from the flat map plus one zero row that stands for
        # every position outside the map (zero key and value, as timm pads).
        rows = halo_index(H, b, self.halo_size, device=x.device)  # (nBlkH, win), -1 outside
        cols = halo_index(W, b, self.halo_size, device=x.device)  # (nBlkW, win)
        keys = grid_index(rows, cols, W)  # (nBlk, win*win), -1 outside the map
        # Keys and values head-major first, then gathered: the gather writes the windows
        # (about 3x the map) once, contiguous, and its backward is an index_add.
        kv = F.pad(self.kv(tokens).reshape(B, H * W, heads * d + C), (0, 0, 0, 1))  # (B, N+1, .)
        index = torch.where(keys >= 0, keys, H * W).flatten()  # the extra zero row outside
        k, v = (
            t.unflatten(-1, (heads, -1)).transpose(1, 2).index_select(2, index).unflatten(2, (n_blk, -1))
            for t in kv.split([heads * d, C], dim=-1)
        )  # (B, heads, nBlk, win*win, d) and (..., C/heads)
        # Padding keys get -inf in the per-axis logits: no pass over the (b*b, win*win) scores
        # to mask them, and a block's own positions always remain.
        outside = None
        if self.mask_padding:
            nbh, nbw = rows.shape[0], cols.shape[0]
            outside = (
                torch.where(rows < 0, float("-inf"), 0.0)[:, None].expand(nbh, nbw, -1).reshape(n_blk, -1),
                torch.where(cols < 0, float("-inf"), 0.0)[None].expand(nbh, nbw, -1).reshape(n_blk, -1),
            )  # (nBlk, win) each
        p = self.attn_drop if self.training else 0.0
        out, weights = attention(  # (B, heads, nBlk, b*b, C/heads)
            q, k, v, rel=self._position_logits(q, outside), scale=self.scale, dropout_p=p,
            need_weights=self.recording,
        )  # fmt: skip
        if weights is not None:  # attend with the recorded rows, so that their gradient is the model's
            out = self._keep_window_map(weights, keys, (H, W), p) @ v
        out = out.permute(0, 2, 3, 1, 4).reshape(-1, n_blk, b * b, C)  # (B, nBlk, b*b, C)
        out = window_reverse(out, (b, b), Hp, Wp)[:, :H, :W].permute(0, 3, 1, 2)  # (B, C, H, W)
        return x + out if self.residual else out

    def _position_logits(self, q: Tensor, outside: tuple[Tensor, Tensor] | None = None) -> Relative:
        """``q . r_height[dy]`` over the window's key rows and ``q . r_width[dx]`` over its key
        columns, for every query of a block; ``outside``: (nBlk, win) additions (``-inf`` for
        rows, columns outside the map)."""
        b, win = self.block_size, self.block_size + 2 * self.halo_size
        # Key row r of the window sits r - halo - i rows from query row i; the table starts at
        # offset -(b + halo - 1).
        key, query = torch.arange(win, device=q.device), torch.arange(b, device=q.device)
        offset = key[None, :] - query[:, None] + b - 1  # (b, win) table row
        qb = q.unflatten(-2, (b, b))  # (B, heads, nBlk, b, b, d)
        rows = torch.einsum("...ijd,ird->...ijr", qb, self.rel_height[offset])  # (..., b, b, win)
        cols = torch.einsum("...ijd,jcd->...ijc", qb, self.rel_width[offset])  # (..., b, b, win)
        if self.scale_pos_logits:
            rows, cols = rows * self.scale, cols * self.scale
        if outside is not None:
            rows = rows + outside[0][:, None, None, :]
            cols = cols + outside[1][:, None, None, :]
        return Relative(rows.flatten(-3, -2), cols.flatten(-3, -2))  # (..., b*b, win) each

    def _keep_window_map(self, weights: Tensor, keys: Tensor, grid: tuple[int, int], p: float) -> Tensor:
        """Record one row per original position (its block's weights over the block's
        window) and return the weights rebuilt from those rows, after dropout."""
        H, W = grid
        b = self.block_size
        pos = torch.arange(H * W, device=keys.device).view(1, H, W, 1)
        pos = pad_to_multiple(pos, b, channels_last=True, value=-1)  # (1, Hp, Wp, 1)
        slots = window_partition(pos, (b, b)).view(-1)  # (nBlk*b*b,) position of each query slot
        where = inverse_index(slots, H * W)  # (N,)
        rows, rebuilt = rows_on_path(weights.flatten(2, 3), where)  # (B, heads, N, win*win), ...
        self.keep_map(rows, kind="window", grid=grid, keys=keys[where // (b * b)])
        rebuilt = rebuilt.view_as(weights)  # (B, heads, nBlk, b*b, win*win)
        return F.dropout(rebuilt, p) if p > 0 else rebuilt

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, block_size={self.block_size}, halo_size={self.halo_size}, "
            f"heads={self.heads}, head_dim={self.head_dim}, scale_pos_logits={self.scale_pos_logits}, "
            f"mask_padding={self.mask_padding}"
        )
