"""Shifted-window attention: timm's Swin block and torchvision's ``ShiftedWindowAttention``.

Both run the same maths in a different order: timm rolls the map and then pads it,
torchvision pads and then rolls (and drops a shift that the padded map is too small for).
Each replacement follows its library's order exactly, computes every window's softmax
explicitly, and records it as a ``"window"`` map ``(B, heads, H*W, K)`` over the unshifted,
unpadded query grid, with ``keys`` ``(H*W, K)`` naming the position behind each window slot
(-1 for padding). The slot index is made by pushing an image of position numbers through the
same roll, pad and partition as the features, so the two cannot disagree. The window
outputs are computed from the recorded rows (``window_rows``), so that with
``record_attention(grad=True)`` the map's gradient is the model's. Neither library
masks padded keys when the window is not shifted, so padding slots can carry weight: the
map keeps it, because it is the weight the model used.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional import attention
from ..layout import inverse_index, rows_on_path, window_partition, window_reverse
from .base import Restore, Sink, TokenLayout, patch_method, uses_own


def window_rows(weights: Tensor, slots: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-window weights -> the recorded window map, its key index, and the weights to
    attend with.

    Args:
        weights: ``(B, nW, heads, K, K)`` softmax weights of every window.
        slots: ``(nW, K)`` int64: the flat position behind each window slot, -1 for padding.

    Returns:
        ``(B, heads, P, K)`` rows of the P real positions in flat order, their keys
        ``(P, K)``, and ``weights`` rebuilt from those rows (equal values): the output is
        computed from the rebuilt weights so that the recorded map lies on the path to the
        output and its gradient is the model's.
    """
    B, nw, heads, K, _ = weights.shape
    where = inverse_index(slots, int((slots >= 0).sum()))  # (P,) flat slot holding each position
    flat = weights.permute(0, 2, 1, 3, 4).reshape(B, heads, nw * K, K)  # (B, heads, nW*K, K)
    rows, rebuilt = rows_on_path(flat, where)  # (B, heads, P, K), (B, heads, nW*K, K)
    rebuilt = rebuilt.view(B, heads, nw, K, K).permute(0, 2, 1, 3, 4)  # (B, nW, heads, K, K)
    return rows, slots[where // K], rebuilt


def _position_image(height: int, width: int, device: torch.device) -> Tensor:
    return torch.arange(height * width, device=device).view(1, height, width, 1)  # (1, H, W, 1)


def adapt_timm_swin_block(
    module: nn.Module, name: str, sink_for: Callable[[str], Sink], layout: TokenLayout | None
) -> Restore | None:
    """Record the ``attn`` of a timm ``SwinTransformerBlock`` (patched at the block's
    ``_attn``, which alone knows the grid and the shift)."""
    swin = sys.modules.get("timm.models.swin_transformer")
    if swin is None or not uses_own(module, swin.SwinTransformerBlock, "_attn"):
        return None
    if not uses_own(module.attn, swin.WindowAttention):
        return None
    sink = sink_for(f"{name}.attn")

    def _attn(self: nn.Module, x: Tensor) -> Tensor:
        _, H, W, C = x.shape
        (wh, ww), (sh, sw) = self.window_size, self.shift_size
        shift = any(self.shift_size)
        pad_h, pad_w = (wh - H % wh) % wh, (ww - W % ww) % ww

        def layout_like_timm(t: Tensor, fill: float) -> Tensor:
            t = torch.roll(t, shifts=(-sh, -sw), dims=(1, 2)) if shift else t
            return F.pad(t, (0, 0, 0, pad_w, 0, pad_h), value=fill)

        shifted = layout_like_timm(x, 0.0)
        _, Hp, Wp, _ = shifted.shape
        windows = swin.window_partition(shifted, self.window_size).view(-1, wh * ww, C)  # (B*nW, K, C)
        mask = self.get_attn_mask(shifted) if getattr(self, "dynamic_mask", False) else self.attn_mask
        slots = swin.window_partition(layout_like_timm(_position_image(H, W, x.device), -1), self.window_size)
        out = _timm_window_attention(self.attn, windows, mask, slots.reshape(-1, wh * ww), (H, W), sink)
        shifted = swin.window_reverse(out.view(-1, wh, ww, C), self.window_size, Hp, Wp)[:, :H, :W]
        return torch.roll(shifted, shifts=(sh, sw), dims=(1, 2)) if shift else shifted.contiguous()

    return patch_method(module, "_attn", _attn)


def _timm_window_attention(
    attn: nn.Module, x: Tensor, mask: Tensor | None, slots: Tensor, grid: tuple[int, int], sink: Sink
) -> Tensor:
    """timm ``WindowAttention.forward`` with explicit weights, recorded over ``grid``."""
    B_, K, _ = x.shape
    num_windows = slots.shape[0]
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(-1, num_windows, K, 3, heads, attn.qkv.out_features // (3 * heads))
    q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # (B, nW, heads, K, d) each
    bias = attn._get_rel_pos_bias().unsqueeze(1)  # (1, 1, heads, K, K)
    if mask is not None:
        bias = bias + mask.view(1, num_windows, 1, K, K).to(bias.dtype)
    _, weights = attention(q, k, v, bias=bias, scale=attn.scale, need_weights=True)
    rows, keys, weights = window_rows(weights, slots)
    sink(rows, kind="window", grid=grid, keys=keys)
    out = attn.attn_drop(weights) @ v  # (B, nW, heads, K, d)
    out = out.transpose(2, 3).reshape(B_, K, -1)  # (B*nW, K, heads * d)
    return attn.proj_drop(attn.proj(out))


def _shift_mask(height: int, width: int, window: list[int], shift: list[int], like: Tensor) -> Tensor:
    """torchvision's mask for shifted windows: -100 between positions from different
    regions of the rolled map. ``(nW, K, K)``."""
    regions = like.new_zeros(height, width)
    count = 0
    for h in ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None)):
        for w in ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None)):
            regions[h[0] : h[1], w[0] : w[1]] = count
            count += 1
    slots = window_partition(regions.view(1, height, width, 1), tuple(window)).view(-1, window[0] * window[1])
    differ = slots.unsqueeze(1) != slots.unsqueeze(2)  # (nW, K, K)
    return like.new_zeros(differ.shape).masked_fill(differ, -100.0)


def adapt_torchvision_swin(
    module: nn.Module, name: str, sink_for: Callable[[str], Sink], layout: TokenLayout | None
) -> Restore | None:
    """Record a torchvision ``ShiftedWindowAttention`` (Swin V1)."""
    tv_swin = sys.modules.get("torchvision.models.swin_transformer")
    if tv_swin is None or type(module) is not tv_swin.ShiftedWindowAttention:
        return None
    sink = sink_for(name)

    def forward(self: nn.Module, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        window, heads = list(self.window_size), self.num_heads
        pad_b, pad_r = (window[0] - H % window[0]) % window[0], (window[1] - W % window[1]) % window[1]
        Hp, Wp = H + pad_b, W + pad_r
        shift = [0 if window[0] >= Hp else self.shift_size[0], 0 if window[1] >= Wp else self.shift_size[1]]
        shifted = sum(shift) > 0

        def layout_like_torchvision(t: Tensor, fill: float) -> Tensor:
            t = F.pad(t, (0, 0, 0, pad_r, 0, pad_b), value=fill)
            return torch.roll(t, shifts=(-shift[0], -shift[1]), dims=(1, 2)) if shifted else t

        windows = window_partition(layout_like_torchvision(x, 0.0), tuple(window))  # (B, nW, K, C)
        nw, K = windows.shape[1:3]
        qkv = F.linear(windows, self.qkv.weight, self.qkv.bias).reshape(B, nw, K, 3, heads, C // heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # (B, nW, heads, K, d) each
        bias = self.get_relative_position_bias().unsqueeze(1)  # (1, 1, heads, K, K)
        if shifted:
            bias = bias + _shift_mask(Hp, Wp, window, shift, x).view(1, nw, 1, K, K)
        _, weights = attention(q, k, v, bias=bias, scale=(C // heads) ** -0.5)
        slots = window_partition(layout_like_torchvision(_position_image(H, W, x.device), -1), tuple(window))
        rows, keys, weights = window_rows(weights, slots.reshape(nw, K))
        sink(rows, kind="window", grid=(H, W), keys=keys)
        out = F.dropout(weights, p=self.attention_dropout, training=self.training) @ v  # (B, nW, heads, K, d)
        out = F.linear(out.transpose(2, 3).reshape(B, nw, K, -1), self.proj.weight, self.proj.bias)
        out = F.dropout(out, p=self.dropout, training=self.training)  # (B, nW, K, C)
        out = window_reverse(out, tuple(window), Hp, Wp)  # (B, Hp, Wp, C)
        out = torch.roll(out, shifts=(shift[0], shift[1]), dims=(1, 2)) if shifted else out
        return out[:, :H, :W].contiguous()

    return patch_method(module, "forward", forward)
