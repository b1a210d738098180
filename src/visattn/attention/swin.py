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

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_float, check_int
from ..functional import attention
from ..layout import inverse_index, rows_on_path
from ..registry import ATTENTION
from .base import AttentionModule
from .parts import head_width, round_up


def window_layout(
    H: int, W: int, ws: int, shift: tuple[int, int], *, mask_padding: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, bool]:
    """The constant index data of shifted windows over an ``H x W`` map (fields of
    ``_Layout``): pad at the bottom and right to multiples of ``ws``, roll by ``-shift``,
    split into ``ws x ws`` windows."""
    Hp, Wp, K = round_up(H, ws), round_up(W, ws), ws * ws
    pos = np.full((Hp, Wp), -1, dtype=np.int64)
    pos[:H, :W] = np.arange(H * W).reshape(H, W)
    pos = np.roll(pos, (-shift[0], -shift[1]), axis=(0, 1))
    # In the rolled frame, the last ``shift`` rows and columns came round from the other
    # border: they form separate regions that may not attend to each other.
    region = 2 * (np.arange(Hp) >= Hp - shift[0])[:, None] + (np.arange(Wp) >= Wp - shift[1])[None, :]

    def windows(a: np.ndarray) -> np.ndarray:  # (Hp, Wp) -> (nWin, K)
        return a.reshape(Hp // ws, ws, Wp // ws, ws).transpose(0, 2, 1, 3).reshape(-1, K)

    src, region = windows(pos), windows(region)
    allowed = region[:, :, None] == region[:, None, :]  # (nWin, K, K)
    real = src >= 0
    if mask_padding:  # padded queries keep their keys so that no row is empty
        allowed &= real[:, None, :] | ~real[:, :, None]
    slot = np.empty(H * W, dtype=np.int64)
    slot[src[real]] = np.flatnonzero(real)
    coords = np.stack(np.divmod(np.arange(K), ws), axis=1)  # (K, 2): row, column in the window
    rel = coords[:, None, :] - coords[None, :, :] + ws - 1  # (K, K, 2)
    bias_index = (rel[..., 0] * (2 * ws - 1) + rel[..., 1]).reshape(-1)  # (K*K,)
    allowed = None if allowed.all() else allowed[:, None]  # (nWin, 1, K, K)
    return src, np.where(real, src, H * W).reshape(-1), slot, allowed, bias_index, not real.all()


class _Layout(NamedTuple):
    src: Tensor  # (nWin, K): flat source position of every window slot, -1 for padding
    gather: Tensor  # (nWin*K,): the same, padding pointing at an extra all-zero token
    slot: Tensor  # (N,): the window slot holding each position
    allowed: Tensor | None  # (nWin, 1, K, K): pairs that may attend; None if all may
    bias_index: Tensor  # (K*K,): row of the relative-position table for every pair
    padded: bool  # whether any slot reads padding


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
        self.heads = heads
        self.head_dim = head_width(channels, heads, head_dim)
        self.attn_drop = check_float("attn_drop", attn_drop, low=0.0, high=1.0)
        self.mask_padding = mask_padding
        self.residual = residual
        inner = heads * self.head_dim
        self.qkv = nn.Linear(channels, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, channels)
        self.proj_drop = nn.Dropout(check_float("proj_drop", proj_drop, low=0.0, high=1.0))
        # One learned bias per head and relative offset (dy, dx) in [-(ws-1), ws-1]^2.
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.scale = self.head_dim**-0.5
        self._layouts: dict[tuple[int, int, tuple[int, int]], tuple] = {}

    def _layout(self, H: int, W: int, shift: tuple[int, int], device: torch.device) -> _Layout:
        """Where every window slot reads from and which query-key pairs may attend, for one
        map size. Built with numpy and cached per size: it is constant data, so tracing
        (torch.export, ONNX) sees constants instead of recording how they were computed."""
        key = (H, W, shift)
        if key not in self._layouts:
            if len(self._layouts) > 32:  # a model meets a handful of sizes; do not grow for ever
                self._layouts.clear()
            self._layouts[key] = window_layout(H, W, self.window_size, shift, mask_padding=self.mask_padding)
        arrays = self._layouts[key]
        *tensors, padded = arrays
        return _Layout(
            *(None if a is None else torch.from_numpy(a).to(device) for a in tensors), bool(padded)
        )

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        B, C, H, W = x.shape
        ws, heads, d = self.window_size, self.heads, self.head_dim
        K = ws * ws
        Hp, Wp = round_up(H, ws), round_up(W, ws)
        # torchvision's rule: no shift along an axis that a single window covers.
        shift = (self.shift_size if Hp > ws else 0, self.shift_size if Wp > ws else 0)
        layout = self._layout(H, W, shift, x.device)
        n_win = layout.src.shape[0]
        # One gather of the C-wide tokens into (shifted, padded) windows replaces pad + roll +
        # partition, and leaves the projection a contiguous input. index_select, not
        # x[:, index]: its backward is an index_add, several times faster.
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        if layout.padded:  # one all-zero token for the padding slots to read
            tokens = torch.cat([tokens, tokens.new_zeros(B, 1, C)], dim=1)  # (B, N + 1, C)
        qkv = self.qkv(tokens.index_select(1, layout.gather))  # (B, nWin*K, 3*inner)
        qkv = qkv.view(B, n_win, K, 3, heads, d).permute(3, 0, 1, 4, 2, 5)  # (3, B, nWin, heads, K, d)
        q, k, v = qkv.unbind(0)
        bias = self.relative_position_bias_table[layout.bias_index].view(K, K, heads).permute(2, 0, 1)
        p = self.attn_drop if self.training else 0.0
        out, weights = attention(  # (B, nWin, heads, K, d)
            q,
            k,
            v,
            mask=layout.allowed,
            bias=bias,
            scale=self.scale,
            dropout_p=p,
            need_weights=self.recording,
        )
        if weights is not None:  # attend with the recorded rows, so that their gradient is the model's
            out = self._keep_window_map(weights, layout.src, (H, W), p) @ v
        out = out.transpose(2, 3).reshape(B, n_win * K, heads * d)  # (B, nWin*K, inner)
        out = self.proj_drop(self.proj(out.index_select(1, layout.slot)))  # (B, N, C): own slots
        out = out.transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)
        return x + out if self.residual else out

    def _keep_window_map(self, weights: Tensor, src: Tensor, grid: tuple[int, int], p: float) -> Tensor:
        """Record one row per original position (its window's weights, ``(B, heads, N, K)``)
        and return the per-window weights rebuilt from those rows, after dropout."""
        B, n_win, heads, K, _ = weights.shape
        flat = weights.transpose(1, 2).reshape(B, heads, n_win * K, K)  # (B, heads, nWin*K, K)
        where = inverse_index(src, grid[0] * grid[1])  # (N,): window slot of each original position
        rows, rebuilt = rows_on_path(flat, where)
        self.keep_map(rows, kind="window", grid=grid, keys=src[where // K])  # (B, heads, N, K)
        rebuilt = rebuilt.view(B, heads, n_win, K, K).transpose(1, 2)  # (B, nWin, heads, K, K)
        return F.dropout(rebuilt, p) if p > 0 else rebuilt

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, window_size={self.window_size}, shift_size={self.shift_size}, "
            f"heads={self.heads}, head_dim={self.head_dim}, mask_padding={self.mask_padding}"
        )
