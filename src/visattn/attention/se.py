"""Squeeze-and-Excitation: a channel gate computed from the global average of each channel.

Hu, Shen and Sun, "Squeeze-and-Excitation Networks", CVPR 2018 (journal version with Albanie and
Wu, TPAMI 2020), arXiv:1709.01507.

Deviations from the paper: none by default. The paper's hidden width is ``C // r``; at the
small widths this toolkit also serves (C = 16 with r = 16 gives one hidden unit) the width is
floored at ``min_hidden`` (8). ``round_to=8`` rounds the width to the nearest multiple of 8
as timm's ``SEModule`` does (``make_divisible``), which reproduces timm exactly (the rule:
``parts.hidden_width``).

Reference checked against: timm ``timm.layers.SEModule`` (``round_to=8``) and
``torchvision.ops.SqueezeExcitation`` (same weights, outputs within 1e-5).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ..registry import ATTENTION
from .base import AttentionModule
from .parts import hidden_width


@ATTENTION.register("se")
class SqueezeExcite(AttentionModule):
    """Squeeze-and-Excitation block: ``y = x * gate(fc2(act(fc1(mean_hw(x)))))``.

    Args:
        channels: input and output width C.
        reduction, min_hidden, round_to, hidden: the hidden width (``parts.hidden_width``):
            ``C // reduction`` rounded to a multiple of ``round_to``, at least ``min_hidden``;
            or ``hidden`` itself. ``round_to=8`` is timm's ``make_divisible``.
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
        hidden: int | None = None,
        act_layer: Callable[[], nn.Module] = nn.ReLU,
        gate_layer: Callable[[], nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__(channels)
        self.hidden = hidden_width(channels, reduction, min_hidden, round_to, hidden)
        # Linear layers on the pooled vector: the same function as 1x1 convolutions on a
        # (B, C, 1, 1) tensor, without the 4-D round trip.
        self.fc1 = nn.Linear(channels, self.hidden)
        self.act = act_layer()
        self.fc2 = nn.Linear(self.hidden, channels)
        self.gate = gate_layer()

    def gated(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        squeezed = x.mean((2, 3))  # (B, C)
        gate = self.gate(self.fc2(self.act(self.fc1(squeezed))))  # (B, C)
        self.keep_map(gate, kind="channel")
        return x, gate[:, :, None, None]  # (B, C, H, W), (B, C, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        base, gate = self.gated(x)
        return base * gate  # (B, C, H, W)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden}"
