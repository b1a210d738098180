"""What the attention benchmark compares visattn's mechanisms with, at the same shapes.

- ``naive``, for ``mhsa``: the tutorial's attention (``scores = q @ k^T * scale``, softmax,
  ``@ v``), materialising the ``(B, heads, N, N)`` scores, around the same projections,
  position encoding and residual as ``MultiHeadSelfAttention2d`` and holding its weights, so
  both compute the same function and differ only in the attention kernel.
- ``timm``, for nine mechanisms: timm's own layer in the configuration of our module (its
  widths, heads, kernel sizes and scaling read from our instance), wrapped with the residual
  where ours adds its input and timm's does not. Weights are timm's own random ones: the cost
  does not depend on their values. Differences that remain are listed in ``TIMM_NOTES``.

A builder takes our module, the side of the square map and the batch size and returns the
baseline module ``(B, C, H, W) -> (B, C, H, W)``, or a string saying why there is none there
(the naive scores would not fit in ``NAIVE_MAX_SCORE_BYTES``, timm's layer does not take the size).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import MultiHeadSelfAttention2d
from ..functional import sincos_2d

__all__ = [
    "BASELINES",
    "NAIVE_MAX_SCORE_BYTES",
    "TIMM_NOTES",
    "Builder",
    "NaiveSelfAttention2d",
    "Residual",
    "timm_missing",
]

Builder = Callable[[nn.Module, int, int], nn.Module | str]

#: Largest ``(B, heads, N, N)`` fp32 score tensor the naive baseline may allocate (it holds
#: two or three at once in a backward pass); 8 images, 4 heads at 128 x 128 would need 32 GiB.
NAIVE_MAX_SCORE_BYTES = 4 * 2**30


def timm_missing() -> str | None:
    """Why the timm baselines cannot run (timm is a development extra), or ``None``."""
    if importlib.util.find_spec("timm") is None:
        return "skipped: timm is not installed (pip install 'timm>=1.0' to compare with it)"
    return None


class NaiveSelfAttention2d(nn.Module):
    """``MultiHeadSelfAttention2d``'s function computed the textbook way, N x N scores held.

    Args:
        source: the module whose weights and options to copy (``pos`` ``"sine"`` or
            ``"none"``, no norm layer).

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``.

    Example:
        >>> NaiveSelfAttention2d(MultiHeadSelfAttention2d(32))(torch.randn(2, 32, 5, 5)).shape
        torch.Size([2, 32, 5, 5])
    """

    def __init__(self, source: MultiHeadSelfAttention2d) -> None:
        super().__init__()
        if source.pos not in ("sine", "none") or not isinstance(source.norm, nn.Identity):
            raise ValueError(
                "NaiveSelfAttention2d supports pos 'sine' or 'none' without a norm layer, "
                f"got pos={source.pos!r}, norm={source.norm}"
            )
        self.heads, self.head_dim, self.pos, self.residual = (
            source.heads,
            source.head_dim,
            source.pos,
            source.residual,
        )
        inner = source.heads * source.head_dim
        self.qkv = nn.Linear(source.channels, 3 * inner, bias=source.qkv.bias is not None)
        self.proj = nn.Linear(inner, source.channels)
        # Same parameter names on both sides; spelled out so that a rename there fails here.
        mapping = {"qkv.weight": "qkv.weight", "qkv.bias": "qkv.bias", "proj.weight": "proj.weight"}
        mapping["proj.bias"] = "proj.bias"
        theirs = source.state_dict()
        self.load_state_dict({ours: theirs[key] for ours, key in mapping.items() if key in theirs})

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        inner = self.heads * self.head_dim
        qkv = self.qkv(x.flatten(2).transpose(1, 2))  # (B, N, 3 * inner)
        if self.pos == "sine":
            enc = sincos_2d(H, W, C, device=x.device, dtype=x.dtype)  # (N, C)
            qkv = qkv + F.pad(F.linear(enc, self.qkv.weight[: 2 * inner]), (0, inner))
        q, k, v = qkv.view(B, H * W, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, h, N, d)
        scores = q @ k.transpose(-2, -1) * self.head_dim**-0.5  # (B, h, N, N)
        out = scores.softmax(dim=-1) @ v  # (B, h, N, d)
        out = self.proj(out.transpose(1, 2).reshape(B, H * W, inner))  # (B, N, C)
        out = out.transpose(1, 2).reshape(B, C, H, W)
        return x + out if self.residual else out


class Residual(nn.Module):
    """``x + body(x)``, for timm layers that leave the shortcut to their block."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class TimmShiftedWindows(nn.Module):
    """Swin's shifted-window step around timm's ``WindowAttention``: pad to whole windows,
    roll, partition (timm's helpers), attend with timm's shift mask, and undo it all.

    The mask is timm's ``SwinTransformerBlock.get_attn_mask`` for the padded map, made once
    at construction as timm does, so the map size is fixed.
    """

    def __init__(self, channels: int, size: int, *, window: int, shift: int, heads: int, residual: bool):
        super().__init__()
        from timm.models.swin_transformer import SwinTransformerBlock

        padded = math.ceil(size / window) * window
        self.window, self.padded, self.residual = window, padded, residual
        self.shift = shift if padded > window else 0  # our rule: no shift with a single window
        block = SwinTransformerBlock(
            channels,
            (padded, padded),
            num_heads=heads,
            window_size=window,
            shift_size=self.shift,
            always_partition=True,
        )
        self.attn = block.attn
        self.register_buffer("mask", block.attn_mask, persistent=False)  # (nWin, K, K) or None

    def forward(self, x: Tensor) -> Tensor:
        from timm.models.swin_transformer import window_partition, window_reverse

        C, H, W = x.shape[1:]
        ws, P, s = self.window, self.padded, self.shift
        if not (P - ws < H <= P and P - ws < W <= P):
            raise ValueError(
                f"TimmShiftedWindows expects (B, C, H, W) with {P - ws} < H, W <= {P} (its mask is made "
                f"for a {P} x {P} padded map), got {tuple(x.shape)}"
            )
        t = F.pad(x.permute(0, 2, 3, 1), (0, 0, 0, P - W, 0, P - H))  # (B, P, P, C)
        t = t.roll((-s, -s), dims=(1, 2)) if s else t
        windows = window_partition(t, (ws, ws)).view(-1, ws * ws, C)  # (B * nWin, K, C)
        out = self.attn(windows, mask=self.mask).view(-1, ws, ws, C)  # (B * nWin, ws, ws, C)
        out = window_reverse(out, (ws, ws), P, P)  # (B, P, P, C)
        out = out.roll((s, s), dims=(1, 2)) if s else out
        out = out[:, :H, :W].permute(0, 3, 1, 2)  # (B, C, H, W)
        return x + out if self.residual else out


def _residual(ours: nn.Module, layer: nn.Module) -> nn.Module:
    return Residual(layer) if getattr(ours, "residual", False) else layer


def _se(ours: nn.Module, size: int, batch: int) -> nn.Module:
    from timm.layers import SEModule

    return SEModule(ours.channels, rd_channels=ours.hidden)


def _eca(ours: nn.Module, size: int, batch: int) -> nn.Module:
    from timm.layers import EcaModule

    return EcaModule(None, kernel_size=ours.kernel_size)  # timm reads kernel_size only without channels


def _cbam(ours: nn.Module, size: int, batch: int) -> nn.Module:
    from timm.layers.cbam import CbamModule

    return CbamModule(ours.channels, rd_channels=ours.hidden, spatial_kernel_size=ours.kernel_size)


def _gc(ours: nn.Module, size: int, batch: int) -> nn.Module:
    from timm.layers import GlobalContext

    add, scale = ours.fusion in ("add", "both"), ours.fusion in ("scale", "both")
    return GlobalContext(ours.channels, fuse_add=add, fuse_scale=scale, rd_channels=ours.hidden)


def _bot(ours: nn.Module, size: int, batch: int) -> nn.Module:
    from timm.layers.bottleneck_attn import BottleneckAttn

    layer = BottleneckAttn(
        ours.channels,
        feat_size=(size, size),
        num_heads=ours.heads,
        qkv_bias=ours.qkv.bias is not None,
        scale_pos_embed=ours.scale_pos,
    )
    return _residual(ours, layer)


def _halo(ours: nn.Module, size: int, batch: int) -> nn.Module | str:
    from timm.layers.halo_attn import HaloAttn

    if size % ours.block_size:
        return f"skipped: timm's HaloAttn needs a multiple of block_size {ours.block_size}, got {size}"
    layer = HaloAttn(
        ours.channels,
        num_heads=ours.heads,
        dim_head=ours.head_dim,
        block_size=ours.block_size,
        halo_size=ours.halo_size,
        qkv_bias=ours.q.bias is not None,
        scale_pos_embed=ours.scale_pos_logits,
    )
    return _residual(ours, layer)


def _nonlocal(ours: nn.Module, size: int, batch: int) -> nn.Module:
    from timm.layers import NonLocalAttn

    # timm's only scale is 1 / sqrt(C); its block already adds the input.
    return NonLocalAttn(ours.channels, use_scale=ours.scale == "input", rd_channels=ours.inner)


def _lambda(ours: nn.Module, size: int, batch: int) -> nn.Module:
    from timm.layers.lambda_layer import LambdaLayer

    bias = ours.qkv.bias is not None
    layer = LambdaLayer(ours.channels, num_heads=ours.heads, dim_head=ours.key_dim, r=ours.r, qkv_bias=bias)
    return _residual(ours, layer)


def _swin(ours: nn.Module, size: int, batch: int) -> nn.Module:
    return TimmShiftedWindows(
        ours.channels,
        size,
        window=ours.window_size,
        shift=ours.shift_size,
        heads=ours.heads,
        residual=ours.residual,
    )


def _naive(ours: nn.Module, size: int, batch: int) -> nn.Module | str:
    scores = batch * ours.heads * size**4 * 4  # (B, heads, N, N) fp32
    if scores > NAIVE_MAX_SCORE_BYTES:
        limit = NAIVE_MAX_SCORE_BYTES / 2**30
        return f"skipped: naive scores would take {scores / 2**30:.0f} GiB (limit {limit:.0f} GiB)"
    return NaiveSelfAttention2d(ours)


#: mechanism -> {variant -> builder}; rows of a variant follow our module's row.
BASELINES: dict[str, dict[str, Builder]] = {
    "mhsa": {"naive": _naive},
    "se": {"timm": _se},
    "eca": {"timm": _eca},
    "cbam": {"timm": _cbam},
    "gc": {"timm": _gc},
    "bot": {"timm": _bot},
    "halo": {"timm": _halo},
    "nonlocal": {"timm": _nonlocal},
    "lambda": {"timm": _lambda},
    "swin": {"timm": _swin},
}

#: Where timm's layer still differs from our default (the cost is that of the same shapes).
TIMM_NOTES: dict[str, str] = {
    "se": "1x1 convolutions instead of linear layers",
    "cbam": "BatchNorm after the 7x7 spatial convolution (ours: none, as in the paper)",
    "bot": "size fixed at construction; explicit softmax, N x N scores held",
    "halo": "explicit softmax; attends to its zero-padded halo (ours masks it); sides multiple of the block",
    "nonlocal": "explicit bmm + softmax, N x N scores held",
    "lambda": "bias in the position convolution",
    "swin": "timm's WindowAttention takes its non-fused path by default; mask made once",
}
