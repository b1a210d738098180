"""Swin shifted-window attention (W-MSA / SW-MSA).

Liu et al., ICCV 2021, "Swin Transformer: Hierarchical Vision Transformer using Shifted
Windows", arXiv:2103.14030. Multi-head self-attention inside non-overlapping ``ws x ws``
windows with a learned relative position bias, the windows shifted by ``shift_size`` (a
cyclic shift of the map plus a mask that keeps the wrapped-around parts apart).

Deviations: the paper only uses maps whose sides are multiples of the window; here the map
is zero-padded at the bottom and right, then shifted (the order of the official detection
code and torchvision; timm shifts first, then pads), and the padded positions are masked
out as keys so that every real position attends to real positions only (torchvision, timm
and the official code let them attend to the zero padding; ``mask_padding=False`` does the
same). Along an axis that one window covers (``H <= window_size``) there is no shift,
torchvision's rule. Shifted-window masks use ``-inf`` where torchvision and timm add -100
(the same weights to within float32 rounding). The module adds its input by default
(``residual=True``): ``y = x + proj(attn(x))``.

Reference checked against: torchvision ``shifted_window_attention`` (with and without shift,
map sides that are and are not multiples of the window, ``mask_padding=False``) and timm
``swin_transformer.WindowAttention`` with its block's shift mask (multiples of the window).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_float, check_int
from ..functional import attention, inverse_index, relative_position_index, window_partition, window_reverse
from ..registry import ATTENTION
from .base import AttentionModule


@ATTENTION.register("swin")
class ShiftedWindowAttention(AttentionModule):
    """Multi-head self-attention inside (shifted) ``window_size x window_size`` windows.

    Args:
        channels: input and output width C.
        window_size: side of the square windows (7 in the paper).
        shift_size: cyclic shift of the windows; ``None`` for ``window_size // 2`` (SW-MSA),
            ``0`` for plain windows (W-MSA).
        heads: number of heads.
        head_dim: width of each head; ``channels // heads`` when ``None``.
        qkv_bias: bias in the Q/K/V projection.
        attn_drop: dropout on the attention weights while training.
        proj_drop: dropout after the output projection while training.
        mask_padding: give the zero padding (added when H or W is not a multiple of the
            window) no weight; ``False`` attends to it as torchvision and timm do.
        residual: add the input to the output.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)`` for any H, W; recorded map ``"window"``
    ``(B, heads, H*W, window_size**2)`` whose keys are the original flat positions of the
    slots of each position's (shifted) window, ``-1`` for padding.

    Example:
        >>> ShiftedWindowAttention(32, window_size=7)(torch.randn(2, 32, 15, 9)).shape
        torch.Size([2, 32, 15, 9])
    """

    family = "local"
    paper = "Liu et al. 2021, Swin Transformer: Hierarchical Vision Transformer using Shifted Windows"
    complexity = "O(N·w²)"

    def __init__(
        self,
        channels: int,
        *,
        window_size: int = 7,
        shift_size: int | None = None,
        heads: int = 4,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        mask_padding: bool = True,
        residual: bool = True,
    ) -> None:
        super().__init__(channels)
        self.window_size = check_int("window_size", window_size)
        shift = window_size // 2 if shift_size is None else shift_size
        if isinstance(shift, bool) or not isinstance(shift, int) or not 0 <= shift < window_size:
            raise ValueError(
                f"shift_size must be None or an integer in [0, window_size={window_size}), got {shift_size!r}"
            )
        self.shift_size = shift
        self.heads = check_int("heads", heads)
        if head_dim is None:
            if channels % heads:
                raise ValueError(
                    f"heads must divide channels ({channels}) when head_dim is not given, got {heads}"
                )
            head_dim = channels // heads
        self.head_dim = check_int("head_dim", head_dim)
        self.attn_drop = check_float("attn_drop", attn_drop, low=0.0, high=1.0)
        self.mask_padding = mask_padding
        self.residual = residual
        inner = heads * head_dim
        self.qkv = nn.Linear(channels, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, channels)
        self.proj_drop = nn.Dropout(check_float("proj_drop", proj_drop, low=0.0, high=1.0))
        # One learned bias per head and relative offset (dy, dx) in [-(ws-1), ws-1]^2.
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _layout(self, H: int, W: int, shift: tuple[int, int], device: torch.device) -> tuple[Tensor, Tensor]:
        """Source positions ``(nWin, K)`` of every window slot (-1 for padding) and which
        query-key pairs may attend, ``(nWin, K, K)``."""
        ws = self.window_size
        Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
        pos = torch.arange(H * W, device=device).view(1, H, W, 1)  # (1, H, W, 1)
        pos = F.pad(pos, (0, 0, 0, Wp - W, 0, Hp - H), value=-1)  # (1, Hp, Wp, 1)
        # Slots that the cyclic shift brought round from the other border form separate regions.
        wrap_h = (torch.arange(Hp, device=device) >= Hp - shift[0]).long()  # (Hp,), none when no shift
        wrap_w = (torch.arange(Wp, device=device) >= Wp - shift[1]).long()  # (Wp,)
        region = (2 * wrap_h[:, None] + wrap_w[None, :]).view(1, Hp, Wp, 1)  # (1, Hp, Wp, 1)
        if shift[0] or shift[1]:
            pos = pos.roll((-shift[0], -shift[1]), dims=(1, 2))
        src = window_partition(pos, (ws, ws)).view(-1, ws * ws)  # (nWin, K)
        region = window_partition(region, (ws, ws)).view(-1, ws * ws)  # (nWin, K)
        allowed = region[:, :, None] == region[:, None, :]  # (nWin, K, K)
        if self.mask_padding:
            real = src >= 0
            # Padded queries keep their keys so that no row is empty; their output is dropped.
            allowed = allowed & (real[:, None, :] | ~real[:, :, None])
        return src, allowed

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        H, W = x.shape[-2:]
        ws, heads, d = self.window_size, self.heads, self.head_dim
        Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
        # torchvision's rule: no shift along an axis that a single window covers.
        shift = (self.shift_size if Hp > ws else 0, self.shift_size if Wp > ws else 0)
        tokens = F.pad(x.permute(0, 2, 3, 1), (0, 0, 0, Wp - W, 0, Hp - H))  # (B, Hp, Wp, C)
        if shift[0] or shift[1]:
            tokens = tokens.roll((-shift[0], -shift[1]), dims=(1, 2))
        windows = window_partition(tokens, (ws, ws))  # (B, nWin, K, C)
        n_win, K = windows.shape[1], ws * ws
        qkv = self.qkv(windows).view(-1, n_win, K, 3, heads, d)  # (B, nWin, K, 3, heads, d)
        # Windows and heads share one axis so that the per-window mask broadcasts over the batch
        # and the operands stay 4-D for the fused kernel.
        qkv = qkv.permute(3, 0, 1, 4, 2, 5).reshape(3, -1, n_win * heads, K, d)  # (3, B, nWin*heads, K, d)
        q, k, v = qkv.unbind(0)
        src, allowed = self._layout(H, W, shift, x.device)
        table = self.relative_position_bias_table  # ((2 ws - 1)^2, heads)
        bias = table[relative_position_index(ws, ws, device=x.device)].permute(2, 0, 1)  # (heads, K, K)
        mask = bias.unsqueeze(0).masked_fill(~allowed.unsqueeze(1), float("-inf"))  # (nWin, heads, K, K)
        p = self.attn_drop if self.training else 0.0
        out, weights = attention(  # (B, nWin*heads, K, d)
            q, k, v, mask=mask.reshape(n_win * heads, K, K), dropout_p=p, need_weights=self.recording
        )
        if weights is not None:
            self._keep_window_map(weights, src, (H, W))
        out = out.view(-1, n_win, heads, K, d).transpose(2, 3)  # (B, nWin, K, heads, d)
        out = out.reshape(-1, n_win, K, heads * d)  # (B, nWin, K, inner)
        out = window_reverse(out, (ws, ws), Hp, Wp)  # (B, Hp, Wp, inner)
        if shift[0] or shift[1]:
            out = out.roll(shift, dims=(1, 2))
        out = self.proj_drop(self.proj(out[:, :H, :W]))  # (B, H, W, C)
        out = out.permute(0, 3, 1, 2)  # (B, C, H, W)
        return x + out if self.residual else out

    def _keep_window_map(self, weights: Tensor, src: Tensor, grid: tuple[int, int]) -> None:
        """Reorder per-window weights to one row per original position."""
        B, K = weights.shape[0], weights.shape[-1]
        n_win = src.shape[0]
        w = weights.view(B, n_win, self.heads, K, K).transpose(1, 2).reshape(B, self.heads, n_win * K, K)
        slot = inverse_index(src, grid[0] * grid[1])  # (N,): window slot of each original position
        self.keep_map(w[:, :, slot], kind="window", grid=grid, keys=src[slot // K])  # (B, heads, N, K)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, window_size={self.window_size}, shift_size={self.shift_size}, "
            f"heads={self.heads}, head_dim={self.head_dim}, mask_padding={self.mask_padding}"
        )
