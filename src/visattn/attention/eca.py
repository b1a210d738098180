"""Efficient Channel Attention: a channel gate from a 1-D convolution across pooled channels.

Wang, Wu, Zhu, Li, Zuo and Hu, "ECA-Net: Efficient Channel Attention for Deep Convolutional
Neural Networks", CVPR 2020, arXiv:1910.03151.

Deviations from the paper: none. The kernel size follows the paper's adaptive rule
``k = |(log2(C) + b) / gamma|_odd`` (gamma = 2, b = 1; ``|t|_odd`` is the nearest odd number,
computed as the official code does: truncate, then add one if even) unless ``kernel_size`` is
given. timm's ``EcaModule`` additionally clamps k to at least 3, which changes only C < 8
(k = 1 by the paper's rule); ``min_kernel_size=3`` reproduces it.

Reference checked against: timm ``timm.layers.EcaModule`` (same weights, outputs within
1e-5; kernel sizes for C = 1..4096).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn

from .._checks import check_odd
from ..registry import ATTENTION
from .base import AttentionModule


def eca_kernel_size(channels: int, gamma: float = 2.0, beta: float = 1.0, min_kernel_size: int = 1) -> int:
    """The paper's adaptive kernel size ``|(log2(C) + beta) / gamma|_odd``, at least
    ``min_kernel_size``."""
    t = int(abs((math.log2(channels) + beta) / gamma))
    return max(t if t % 2 else t + 1, min_kernel_size)


def _check_real(name: str, value: object, *, positive: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and (value > 0 or not positive):
        return float(value)
    allowed = "a finite number > 0" if positive else "a finite number"
    raise ValueError(f"{name} must be {allowed}, got {value!r}")


@ATTENTION.register("eca")
class EfficientChannelAttention(AttentionModule):
    """ECA block: ``y = x * gate(conv1d_k(mean_hw(x)))``, the convolution sliding along the
    channel axis with zero padding, no bias, one weight vector of length k.

    Args:
        channels: input and output width C.
        kernel_size: odd kernel size k; ``None`` computes it from C with the paper's rule.
        gamma: gamma of the adaptive rule (> 0).
        beta: b of the adaptive rule.
        min_kernel_size: odd lower bound applied to the adaptive k (3 reproduces timm).
        gate_layer: the gate, called with no arguments; it must map to [0, 1].

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``; recorded map kind ``"channel"``: the gate
    ``(B, C)`` that multiplies the input.

    Example:
        >>> EfficientChannelAttention(64).kernel_size
        3
        >>> EfficientChannelAttention(64)(torch.randn(2, 64, 7, 5)).shape
        torch.Size([2, 64, 7, 5])
    """

    family = "channel"
    paper = "Wang et al. 2020, ECA-Net: Efficient Channel Attention for Deep CNNs"
    complexity = "O(N)"

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int | None = None,
        gamma: float = 2.0,
        beta: float = 1.0,
        min_kernel_size: int = 1,
        gate_layer: Callable[[], nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__(channels)
        gamma = _check_real("gamma", gamma, positive=True)
        beta = _check_real("beta", beta, positive=False)
        min_kernel_size = check_odd("min_kernel_size", min_kernel_size)
        if kernel_size is None:
            kernel_size = eca_kernel_size(channels, gamma, beta, min_kernel_size)
        self.kernel_size = check_odd("kernel_size", kernel_size)
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.gate = gate_layer()

    def gated(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        B, C = x.shape[:2]
        pooled = x.mean((2, 3)).view(B, 1, C)  # (B, 1, C): channels become the sequence axis
        gate = self.gate(self.conv(pooled)).view(B, C)  # (B, C)
        self.keep_map(gate, kind="channel")
        return x, gate[:, :, None, None]  # (B, C, H, W), (B, C, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        base, gate = self.gated(x)
        return base * gate  # (B, C, H, W)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}"
