"""Triplet attention: three Z-pool gates on the (C, W), (H, C) and (H, W) planes, averaged.

Misra, Nalamada, Arasanipalai and Hou, "Rotate to Attend: Convolutional Triplet Attention
Module", WACV 2021, arXiv:2010.03045. Each branch rotates the tensor so that one dimension
is reduced by Z-pool (``[max; mean]`` along it), then applies a k x k convolution (k = 7),
BatchNorm and a sigmoid, and gates the rotated tensor; the three gated tensors are rotated
back and averaged: ``y = (x * g_cw + x * g_hc + x * g_hw) / 3``.

Deviations from the paper: none. The rotations are not materialised: each Z-pool reduces the
original tensor along H, W or C directly and the gates broadcast back, which gives the same
function as the rotate-gate-rotate-back formulation (the tests compare with that one). The
planes keep the authors' orientation (the C-H branch convolves an (H, C) plane), so their
weights load unchanged. The released code's BatchNorm momentum is 0.01; ``norm_layer``
defaults to PyTorch's BatchNorm2d (momentum 0.1), which only matters while training.

Reference checked against: no installable implementation; a float64 re-implementation with
explicit rotations (as in the paper's Fig. 3) in tests/attention/test_triplet.py.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .._checks import check_odd
from ..registry import ATTENTION
from .base import AttentionModule


def zpool(x: Tensor, dim: int) -> Tensor:
    """``[max; mean]`` of ``x`` along ``dim``, stacked as two planes at dim 1."""
    return torch.stack((x.amax(dim), x.mean(dim)), dim=1)


class _PlaneGate(nn.Module):
    """Convolution (2 -> 1 plane, no bias), norm and gate on a Z-pooled ``(B, 2, P, Q)``."""

    def __init__(
        self, kernel_size: int, norm_layer: Callable[[int], nn.Module], gate_layer: Callable[[], nn.Module]
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = norm_layer(1)
        self.gate = gate_layer()

    def forward(self, planes: Tensor) -> Tensor:
        return self.gate(self.norm(self.conv(planes)))  # (B, 1, P, Q)


@ATTENTION.register("triplet")
class TripletAttention(AttentionModule):
    """Triplet attention: ``y = x * mean(g_cw, g_hc, g_hw)`` with gates broadcast over the
    dimension each branch pooled away.

    Args:
        channels: input and output width C.
        kernel_size: side of each branch's convolution (odd; 7 in the paper).
        spatial: include the H-W branch (the paper's full module); ``False`` keeps only the
            two cross-dimension branches, averaged (the released code's ``no_spatial``).
        norm_layer: norm after each convolution, called with 1.
        gate_layer: the gate (sigmoid), called with no arguments; it must map to [0, 1].

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``. Recorded maps: ``"hw"`` (kind spatial,
    ``(B, 1, H, W)``: the H-W branch gate), ``"ch"`` (kind gate, ``(B, C, H, 1)``: the C-H
    branch gate) and ``"cw"`` (kind gate, ``(B, C, 1, W)``: the C-W branch gate). The input is
    multiplied by their mean.

    Example:
        >>> TripletAttention(64)(torch.randn(2, 64, 7, 5)).shape
        torch.Size([2, 64, 7, 5])
    """

    family = "channel-spatial"
    paper = "Misra et al. 2021, Rotate to Attend: Convolutional Triplet Attention Module"
    complexity = "O(N)"

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int = 7,
        spatial: bool = True,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        gate_layer: Callable[[], nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__(channels)
        self.kernel_size = check_odd("kernel_size", kernel_size)
        self.spatial = spatial
        self.cw = _PlaneGate(kernel_size, norm_layer, gate_layer)
        self.ch = _PlaneGate(kernel_size, norm_layer, gate_layer)
        self.hw = _PlaneGate(kernel_size, norm_layer, gate_layer) if spatial else None

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        # C-W interaction: pool away H; the gate lives on the (C, W) plane.
        g_cw = self.cw(zpool(x, 2)).transpose(1, 2)  # (B, 1, C, W) -> (B, C, 1, W)
        # C-H interaction: pool away W; the authors convolve the (H, C) plane.
        g_ch = self.ch(zpool(x, 3).transpose(2, 3))  # (B, 1, H, C)
        g_ch = g_ch.permute(0, 3, 2, 1)  # (B, C, H, 1)
        self.keep_map(g_ch, kind="gate", part="ch")
        self.keep_map(g_cw, kind="gate", part="cw")
        if self.hw is None:
            return x * ((g_cw + g_ch) / 2)
        g_hw = self.hw(zpool(x, 1))  # (B, 1, H, W)
        self.keep_map(g_hw, kind="spatial", part="hw")
        return x * ((g_cw + g_ch + g_hw) / 3)  # (B, C, H, W)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, spatial={self.spatial}"
