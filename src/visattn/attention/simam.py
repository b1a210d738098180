"""SimAM: parameter-free 3-D attention weights from the minimal energy of each neuron.

Yang, Zhang, Li and Xie, "SimAM: A Simple, Parameter-Free Attention Module for Convolutional
Neural Networks", ICML 2021, PMLR volume 139,
https://proceedings.mlr.press/v139/yang21o.html (the paper has no arXiv/doi identifier).
A neuron t of a channel is important when a linear separator ``w t + b`` tells it apart from
the other neurons of its channel. The minimal regularised energy of that separation has the
closed form ``e_t = 4 (var + lambda) / ((t - mu)^2 + 2 var + 2 lambda)`` and the output is
``x * sigmoid(1 / e)``, with lambda = 1e-4.

Deviations from the paper: none. As the paper proposes (the neurons of one channel are
assumed to share one distribution, so the statistics are computed once per channel) and as
the authors' code does, ``mu`` and ``var`` are the statistics of the whole channel rather
than of the M - 1 other neurons, with ``var = sum((x - mu)^2) / n`` and ``n = H * W - 1``. At
``H * W == 1`` that ``n`` is 0 (the authors' code divides 0 by 0 and returns NaN): here ``n``
is floored at 1, so the single neuron gets ``var = 0``, ``1 / e = 0.5`` and the weight
``sigmoid(0.5)``, the value any input size gives a neuron that sits at its channel's mean.

Reference checked against: no installable package; tests/attention/test_simam.py checks the
closed form against a per-neuron float64 least-squares minimisation of the energy and the module
against a float64 loop over neurons.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .._checks import check_float
from ..registry import ATTENTION
from .base import AttentionModule


def inverse_energy(deviation_sq: Tensor, variance: Tensor, e_lambda: float) -> Tensor:
    """``1 / e_t``, the inverse minimal energy: ``(t - mu)^2 / (4 (var + lambda)) + 1 / 2``.

    Args:
        deviation_sq: ``(t - mu)^2`` per neuron.
        variance: ``var`` of the statistics set, broadcastable to ``deviation_sq``.
        e_lambda: the regulariser lambda (> 0).
    """
    return deviation_sq / (4 * (variance + e_lambda)) + 0.5


@ATTENTION.register("simam")
class SimAM(AttentionModule):
    """SimAM: ``y = x * sigmoid(1 / e)`` with the closed-form minimal energy ``e`` per neuron.

    Args:
        channels: input and output width C (the module has no parameters).
        e_lambda: the energy's regulariser lambda (> 0; 1e-4 in the paper).
        gate_layer: the gate (sigmoid), called with no arguments; it must map to [0, 1].

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``. Recorded map: kind ``"spatial"``
    ``(B, 1, H, W)``, the mean over channels of the full ``(B, C, H, W)`` weight that multiplies
    the input.

    Example:
        >>> SimAM(64)(torch.randn(2, 64, 7, 5)).shape
        torch.Size([2, 64, 7, 5])
    """

    family = "channel-spatial"
    paper = "Yang et al. 2021, SimAM: A Simple, Parameter-Free Attention Module for CNNs"
    complexity = "O(N)"

    def __init__(
        self,
        channels: int,
        *,
        e_lambda: float = 1e-4,
        gate_layer: Callable[[], nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__(channels)
        self.e_lambda = check_float("e_lambda", e_lambda, low=0.0, high=float("inf"))
        if self.e_lambda == 0:
            # A constant channel would give 0 / 0 without the regulariser.
            raise ValueError(f"e_lambda must be a number > 0, got {e_lambda!r}")
        self.gate = gate_layer()

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        _, _, H, W = x.shape
        n = max(H * W - 1, 1)  # see the module docstring for H * W == 1
        deviation_sq = (x - x.mean((2, 3), keepdim=True)).square()  # (B, C, H, W)
        variance = deviation_sq.sum((2, 3), keepdim=True) / n  # (B, C, 1, 1)
        weight = self.gate(inverse_energy(deviation_sq, variance, self.e_lambda))  # (B, C, H, W)
        if self.recording:
            self.keep_map(weight.mean(1, keepdim=True), kind="spatial")  # (B, 1, H, W)
        return x * weight

    def extra_repr(self) -> str:
        return f"channels={self.channels}, e_lambda={self.e_lambda}"
