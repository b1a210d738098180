"""Coordinate attention: channel gates that keep one spatial coordinate each.

Hou, Zhou and Feng, "Coordinate Attention for Efficient Mobile Network Design", CVPR 2021,
arXiv:2103.02907. Eq. (4)-(9): average each channel along W (giving ``z_h``, C x H) and along
H (``z_w``, C x W), concatenate along the position axis, ``f = h_swish(BN(F1([z_h, z_w])))``
with a 1x1 convolution ``F1`` to ``C / r`` channels, split back into ``f_h`` and ``f_w``, and
``y = x * sigmoid(F_h(f_h)) * sigmoid(F_w(f_w))`` with two 1x1 convolutions back to C.

Deviations from the paper: none by default. The width is ``max(min_hidden, C // r)`` with
r = 32 and a floor of 8, as in the authors' released code; the convolutions have biases, as
there. timm's ``CoordAttn`` differs in two defaults, both reachable by options: it has no
biases (``bias=False``) and its width is ``make_divisible(C / 16 * 2 / 3, 8)`` (pass it as
``hidden``; at C = 512 that is 24 where ours is 16; at C <= 256 both give 8).

Reference checked against: timm ``timm.layers.CoordAttn`` with ``bias=False`` and ``hidden``
set to timm's width; same weights, outputs within 1e-5.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..registry import ATTENTION
from .base import AttentionModule
from .parts import hidden_width


@ATTENTION.register("coord")
class CoordinateAttention(AttentionModule):
    """Coordinate attention: ``y = x * a_h * a_w`` with ``a_h`` ``(B, C, H, 1)`` and ``a_w``
    ``(B, C, 1, W)``.

    Args:
        channels: input and output width C.
        reduction, min_hidden, round_to, hidden: the hidden width (``parts.hidden_width``):
            ``C // reduction`` rounded to a multiple of ``round_to``, at least ``min_hidden``;
            or ``hidden`` itself. The paper's r is 32; the authors' code floors at 8.
        bias: biases in the three 1x1 convolutions.
        act_layer: the shared activation (h-swish), called with no arguments.
        norm_layer: norm after the shared convolution, called with the hidden width.
        gate_layer: the gate (sigmoid), called with no arguments; it must map to [0, 1].

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``. Recorded map: kind ``"spatial"``
    ``(B, 1, H, W)``, the mean over channels of the gate ``a_h * a_w`` that multiplies the
    input.

    Example:
        >>> CoordinateAttention(64)(torch.randn(2, 64, 7, 5)).shape
        torch.Size([2, 64, 7, 5])
    """

    family = "channel-spatial"
    paper = "Hou et al. 2021, Coordinate Attention for Efficient Mobile Network Design"
    complexity = "O(N)"

    def __init__(
        self,
        channels: int,
        *,
        reduction: int = 32,
        min_hidden: int = 8,
        round_to: int = 1,
        hidden: int | None = None,
        bias: bool = True,
        act_layer: Callable[[], nn.Module] = nn.Hardswish,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        gate_layer: Callable[[], nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__(channels)
        self.hidden = hidden_width(channels, reduction, min_hidden, round_to, hidden)
        self.conv = nn.Conv2d(channels, self.hidden, 1, bias=bias)
        self.norm = norm_layer(self.hidden)
        self.act = act_layer()
        self.conv_h = nn.Conv2d(self.hidden, channels, 1, bias=bias)
        self.conv_w = nn.Conv2d(self.hidden, channels, 1, bias=bias)
        self.gate_h = gate_layer()
        self.gate_w = gate_layer()

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        _, _, H, W = x.shape
        # Both strips on one position axis, so that F1 and the norm see them together.
        strips = torch.cat((x.mean(3), x.mean(2)), dim=2).unsqueeze(-1)  # (B, C, H + W, 1)
        f = self.act(self.norm(self.conv(strips)))  # (B, hidden, H + W, 1)
        f_h, f_w = f.split((H, W), dim=2)  # (B, hidden, H, 1), (B, hidden, W, 1)
        a_h = self.gate_h(self.conv_h(f_h))  # (B, C, H, 1)
        a_w = self.gate_w(self.conv_w(f_w)).transpose(2, 3)  # (B, C, 1, W)
        if self.recording:
            self.keep_map((a_h * a_w).mean(1, keepdim=True), kind="spatial")  # (B, 1, H, W)
        return x * a_h * a_w

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden}"
