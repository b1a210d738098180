"""Shuffle attention: per-group channel and spatial gates, then a channel shuffle.

Zhang and Yang, "SA-Net: Shuffle Attention for Deep Convolutional Neural Networks", ICASSP
2021, arXiv:2102.00240. The C channels are split into G groups; each group's channels are
split in two halves of ``k = C / (2G)``. The first half gets a channel gate
``sigmoid(W1 * GAP(x) + b1)``, the second a spatial gate
``sigmoid(W2 * GN(x) + b2)``, with per-channel scales and shifts ``W1, b1, W2, b2``
(k each) shared by all groups. The halves are concatenated back in place and a channel
shuffle with two groups interleaves the first and second half of all C channels.

Deviations from the paper: the paper's G = 64 needs ``C % 128 == 0``; the module uses the
largest G <= ``groups`` that divides ``C / 2`` (C = 32 gives G = 16, C = 48 gives G = 24),
so any even C works. The GroupNorm is the authors': one group per channel of the spatial
half (each channel normalised over its own H x W, then its own affine), not one group over
the half; it is written out here (mean and biased variance over H x W) so that ONNX export
does not depend on a GroupNormalization operator. Parameters start as in the authors' code
(scales 0, shifts 1, GroupNorm affine 1 and 0).

Reference checked against: no installable implementation; a float64 re-implementation that
follows the authors' data layout (a (B * G, C / G, H, W) view, chunk, GroupNorm, concatenate,
reshape, two-group shuffle) in tests/attention/test_shuffle.py, plus the shuffle order and the
per-channel statistics as properties.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .._checks import check_float, check_int
from ..registry import ATTENTION
from .base import AttentionModule
from .parts import largest_divisor


def shuffle_groups(channels: int, groups: int) -> int:
    """The largest G <= ``groups`` with ``channels % (2 G) == 0``."""
    if channels % 2:
        raise ValueError(f"ShuffleAttention needs an even number of channels, got {channels}")
    return largest_divisor(channels // 2, groups)


@ATTENTION.register("shuffle")
class ShuffleAttention(AttentionModule):
    """Shuffle attention (SA-Net): grouped channel and spatial gates, then a channel shuffle.

    Args:
        channels: input and output width C (even).
        groups: the largest number of groups G to use (64 in the paper); the module takes
            the largest G <= ``groups`` dividing ``C / 2`` (see ``self.groups``).
        eps: the GroupNorm epsilon.
        gate_layer: the gate (sigmoid), called with no arguments; it must map to [0, 1].

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``. Recorded maps: ``"channel"`` (kind gate,
    ``(B, G, k)``: the channel gate of the first half of each group) and ``"spatial"`` (kind
    spatial, ``(B, 1, H, W)``: the mean of the spatial gates over the ``C / 2`` channels they
    multiply).

    Example:
        >>> ShuffleAttention(64)(torch.randn(2, 64, 7, 5)).shape
        torch.Size([2, 64, 7, 5])
    """

    family = "channel-spatial"
    paper = "Zhang and Yang 2021, SA-Net: Shuffle Attention for Deep Convolutional Neural Networks"
    complexity = "O(N)"

    def __init__(
        self,
        channels: int,
        *,
        groups: int = 64,
        eps: float = 1e-5,
        gate_layer: Callable[[], nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__(channels)
        self.groups = shuffle_groups(channels, check_int("groups", groups))
        self.eps = check_float("eps", eps, low=0.0, high=1.0)
        k = channels // (2 * self.groups)
        self.channel_weight = nn.Parameter(torch.zeros(k))
        self.channel_bias = nn.Parameter(torch.ones(k))
        self.spatial_weight = nn.Parameter(torch.zeros(k))
        self.spatial_bias = nn.Parameter(torch.ones(k))
        self.norm_weight = nn.Parameter(torch.ones(k))
        self.norm_bias = nn.Parameter(torch.zeros(k))
        self.gate = gate_layer()

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        B, C, H, W = x.shape
        G = self.groups
        k = C // (2 * G)
        halves = x.reshape(B, G, 2, k, H, W)
        first, second = halves[:, :, 0], halves[:, :, 1]  # (B, G, k, H, W) each

        def per_channel(p: Tensor) -> Tensor:
            return p.view(k, 1, 1)  # broadcast over (B, G, k, H, W)

        pooled = first.mean((3, 4), keepdim=True)  # (B, G, k, 1, 1)
        channel = self.gate(per_channel(self.channel_weight) * pooled + per_channel(self.channel_bias))
        mean = second.mean((3, 4), keepdim=True)  # (B, G, k, 1, 1)
        var = second.var((3, 4), keepdim=True, correction=0)
        normed = (second - mean) * torch.rsqrt(var + self.eps)
        normed = normed * per_channel(self.norm_weight) + per_channel(self.norm_bias)
        spatial = self.gate(per_channel(self.spatial_weight) * normed + per_channel(self.spatial_bias))
        if self.recording:
            self.keep_map(channel.view(B, G, k), kind="gate", part="channel")
            self.keep_map(spatial.mean((1, 2)).unsqueeze(1), kind="spatial", part="spatial")  # (B, 1, H, W)
        out = torch.stack((first * channel, second * spatial), dim=2)  # (B, G, 2, k, H, W)
        # Channel shuffle with two groups: output channel 2i is channel i, 2i + 1 is C/2 + i.
        out = out.reshape(B, 2, C // 2, H, W).transpose(1, 2)  # (B, C/2, 2, H, W)
        return out.reshape(B, C, H, W)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}, eps={self.eps}"
