"""Style-based Recalibration Module: a channel gate from each channel's style (mean and
standard deviation over positions).

Lee, Kim and Nam, "SRM: A Style-based Recalibration Module for Convolutional Neural
Networks", ICCV 2019, arXiv:1903.10829.

Style pooling: ``mu_c = mean_hw(x_c)``, ``sigma_c = sqrt(mean_hw((x_c - mu_c)^2) + eps)``.
Style integration: ``z_c = w_c0 mu_c + w_c1 sigma_c`` (channel-wise fully connected layer, two
weights per channel, no bias), ``g = sigmoid(BN(z))``, ``y = x * g``.

Deviations from the paper: ``eps`` (1e-5) inside the square root, so that the standard
deviation of a single position (H = W = 1, or a constant channel) is ``sqrt(eps)`` with a
finite gradient instead of a square root at zero. The official code divides the variance by
``HW - 1`` (``torch.std``) and returns NaN at 1x1; ``unbiased=True`` divides by
``max(HW - 1, 1)`` instead. The channel-wise weights start at zero, as in the official code
(the gate starts at ``sigmoid(beta)``). The batch norm needs batches of two or more while
training.

Reference checked against: no installable implementation; the tests compare with an
independent float64 loop over channels of the paper's equations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..registry import ATTENTION
from .base import AttentionModule


@ATTENTION.register("srm")
class StyleRecalibration(AttentionModule):
    """SRM block: ``y = x * gate(norm(w0 * mean_hw(x) + w1 * std_hw(x)))``, per channel.

    Args:
        channels: input and output width C.
        eps: added to the variance before the square root (> 0).
        unbiased: divide the variance by ``max(HW - 1, 1)`` (the official code's
            ``torch.std``) instead of HW (the paper).
        norm_layer: normalisation of the integrated style, called with C; it receives
            ``(B, C)`` tensors.
        gate_layer: the gate, called with no arguments; it must map to [0, 1].

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``; recorded map kind ``"channel"``: the gate
    ``(B, C)`` that multiplies the input.

    Example:
        >>> StyleRecalibration(64)(torch.randn(2, 64, 7, 5)).shape
        torch.Size([2, 64, 7, 5])
    """

    family = "channel"
    paper = "Lee et al. 2019, SRM: A Style-based Recalibration Module for CNNs"
    complexity = "O(N)"

    def __init__(
        self,
        channels: int,
        *,
        eps: float = 1e-5,
        unbiased: bool = False,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm1d,
        gate_layer: Callable[[], nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__(channels)
        # eps > 0 strictly: the square root at a single position (zero variance) needs it.
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise ValueError(f"eps must be a number in (0, 1), got {eps!r}")
        self.eps = float(eps)
        self.unbiased = unbiased
        # (C, 2): the weights of mean and standard deviation for each channel.
        self.style_weight = nn.Parameter(torch.zeros(channels, 2))
        self.norm = norm_layer(channels)
        self.gate = gate_layer()

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        n = x.shape[2] * x.shape[3]
        var, mean = torch.var_mean(x, dim=(2, 3), correction=0)  # (B, C) each
        if self.unbiased and n > 1:
            var = var * (n / (n - 1))
        std = (var + self.eps).sqrt()  # (B, C)
        z = mean * self.style_weight[:, 0] + std * self.style_weight[:, 1]  # (B, C)
        gate = self.gate(self.norm(z))  # (B, C)
        self.keep_map(gate, kind="channel")
        return x * gate[:, :, None, None]  # (B, C, H, W)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, eps={self.eps}, unbiased={self.unbiased}"
