"""Squeeze-and-Excitation: a channel gate computed from the global average of each channel.

Hu, Shen and Sun, "Squeeze-and-Excitation Networks", CVPR 2018 (journal version with Albanie and
Wu, TPAMI 2020), arXiv:1709.01507.

Deviations from the paper: none by default. The paper's hidden width is ``C // r``; at the
small widths this toolkit also serves (C = 16 with r = 16 gives one hidden unit) the width is
floored at ``min_hidden`` (8). ``round_to=8`` rounds the width to the nearest multiple of 8
as timm's ``SEModule`` does (``make_divisible``), which reproduces timm exactly.

Reference checked against: timm ``timm.layers.SEModule`` (``round_to=8``) and
``torchvision.ops.SqueezeExcitation`` (same weights, outputs within 1e-5).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .._checks import check_int
from ..registry import ATTENTION
from .base import AttentionModule


def se_hidden_width(channels: int, reduction: int, min_hidden: int, round_to: int) -> int:
    """``channels // reduction`` rounded to the nearest multiple of ``round_to`` (ties up, at
    least ``round_to``), then at least ``min_hidden``.

    Rounding the integer ``C // r`` gives the same multiple as rounding the real ``C / r``
    for every even ``round_to`` (timm rounds the real value with divisor 8).
    """
    width = channels // reduction
    if round_to > 1:
        width = max(round_to, (width + round_to // 2) // round_to * round_to)
    return max(min_hidden, width)


@ATTENTION.register("se")
class SqueezeExcite(AttentionModule):
    """Squeeze-and-Excitation block: ``y = x * gate(fc2(act(fc1(mean_hw(x)))))``.

    Args:
        channels: input and output width C.
        reduction: the paper's ratio r; the hidden width is ``C // r`` before the floor.
        min_hidden: lower bound of the hidden width.
        round_to: round the hidden width to the nearest multiple of this (1: the paper's
            ``C // r``; 8: timm's ``make_divisible``).
        act_layer: activation between the two layers (the paper's delta), called with no
            arguments.
        gate_layer: the gate (the paper's sigma), called with no arguments; it must map to
            [0, 1] for the recorded map to be a gate.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``; recorded map kind ``"channel"``: the gate
    ``(B, C)`` that multiplies the input.

    Example:
        >>> SqueezeExcite(64)(torch.randn(2, 64, 7, 5)).shape
        torch.Size([2, 64, 7, 5])
    """

    family = "channel"
    paper = "Hu et al. 2018, Squeeze-and-Excitation Networks"
    complexity = "O(N)"

    def __init__(
        self,
        channels: int,
        *,
        reduction: int = 16,
        min_hidden: int = 8,
        round_to: int = 1,
        act_layer: Callable[[], nn.Module] = nn.ReLU,
        gate_layer: Callable[[], nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__(channels)
        self.reduction = check_int("reduction", reduction)
        self.min_hidden = check_int("min_hidden", min_hidden)
        self.round_to = check_int("round_to", round_to)
        self.hidden = se_hidden_width(channels, reduction, min_hidden, round_to)
        # Linear layers on the pooled vector: the same function as 1x1 convolutions on a
        # (B, C, 1, 1) tensor, without the 4-D round trip.
        self.fc1 = nn.Linear(channels, self.hidden)
        self.act = act_layer()
        self.fc2 = nn.Linear(self.hidden, channels)
        self.gate = gate_layer()

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        squeezed = x.mean((2, 3))  # (B, C)
        gate = self.gate(self.fc2(self.act(self.fc1(squeezed))))  # (B, C)
        self.keep_map(gate, kind="channel")
        return x * gate[:, :, None, None]  # (B, C, H, W)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden}"
