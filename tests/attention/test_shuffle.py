"""Shuffle attention against a float64 re-implementation in the authors' data layout
(grouped view, chunk, GroupNorm with one group per channel, concatenate, two-group shuffle),
plus the shuffle order, the per-channel normalisation, the group choice, maps and options."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from attnkit import perturbed
from torch import Tensor, nn

from visattn import record_attention
from visattn.attention.shuffle import ShuffleAttention


def reference(module: ShuffleAttention, x: Tensor) -> Tensor:
    m = copy.deepcopy(module).double()
    x = x.double()
    b, c, h, w = x.shape
    g = m.groups
    k = c // (2 * g)

    def col(p: Tensor) -> Tensor:
        return p.view(1, k, 1, 1)

    grouped = x.reshape(b * g, c // g, h, w)
    x0, x1 = grouped.chunk(2, dim=1)  # (B * G, k, H, W) each
    xn = x0 * torch.sigmoid(col(m.channel_weight) * x0.mean((2, 3), keepdim=True) + col(m.channel_bias))
    gn = F.group_norm(x1, k, m.norm_weight, m.norm_bias, m.eps)  # k groups of one channel
    xs = x1 * torch.sigmoid(col(m.spatial_weight) * gn + col(m.spatial_bias))
    out = torch.cat([xn, xs], dim=1).reshape(b, c, h, w)
    out = out.reshape(b, 2, c // 2, h, w).permute(0, 2, 1, 3, 4)  # shuffle with 2 groups
    return out.reshape(b, c, h, w)


@pytest.mark.parametrize("channels", [16, 32, 48])
@pytest.mark.parametrize("hw", [(7, 5), (8, 8), (1, 1), (2, 9)])
def test_matches_float64_reference(channels, hw):
    module = perturbed(ShuffleAttention(channels, groups=4), seed=5, scale=0.5)
    x = torch.randn(2, channels, *hw) * 2 + 0.5
    with torch.no_grad():
        torch.testing.assert_close(module(x).double(), reference(module, x), atol=1e-5, rtol=1e-5)


def test_default_groups_match_reference():
    module = perturbed(ShuffleAttention(64), seed=5, scale=0.5)
    assert module.groups == 32
    x = torch.randn(2, 64, 6, 7)
    with torch.no_grad():
        torch.testing.assert_close(module(x).double(), reference(module, x), atol=1e-5, rtol=1e-5)


def test_shuffle_order():
    """With every gate at sigmoid(0) = 1/2, y = shuffle(x) / 2, and the shuffle interleaves
    the two halves of the channels: y[2i] = x[i] / 2, y[2i + 1] = x[C/2 + i] / 2."""
    module = ShuffleAttention(16, groups=2)
    with torch.no_grad():
        module.channel_bias.zero_()
        module.spatial_bias.zero_()
    x = torch.randn(2, 16, 4, 3)
    out = module(x)
    torch.testing.assert_close(out[:, 0::2], x[:, :8] / 2)
    torch.testing.assert_close(out[:, 1::2], x[:, 8:] / 2)


def test_spatial_statistics_are_per_channel():
    """Offsetting and rescaling one channel of a spatial half leaves the other channels'
    outputs unchanged (a GroupNorm with one group over the half would mix them)."""
    module = perturbed(ShuffleAttention(16, groups=2), seed=5, scale=0.5)  # k = 4 channels per half
    x = torch.randn(1, 16, 5, 5)
    y = x.clone()
    y[:, 5] = y[:, 5] * 10 + 7  # group 0, spatial half, its second channel
    with torch.no_grad():
        ox, oy = module(x), module(y)
    changed = (ox - oy).abs().amax((0, 2, 3)) > 1e-6
    # Input channel 5 is channel 5 < C/2 before the shuffle, so output channel 2 * 5 only.
    assert changed.nonzero().flatten().tolist() == [10]


def test_group_choice_and_map_meaning():
    assert ShuffleAttention(32).groups == 16 and ShuffleAttention(48).groups == 24
    assert ShuffleAttention(256).groups == 64 and ShuffleAttention(96, groups=5).groups == 4
    module = perturbed(ShuffleAttention(16, groups=2), seed=5, scale=0.5)
    x = torch.randn(2, 16, 3, 4)
    with torch.no_grad(), record_attention(module) as maps:
        module(x)
    channel, spatial = maps["ShuffleAttention:channel"], maps["ShuffleAttention:spatial"]
    assert maps.kind("ShuffleAttention:channel") == "gate" and channel.shape == (2, 2, 4)
    assert maps.kind("ShuffleAttention:spatial") == "spatial" and spatial.shape == (2, 1, 3, 4)
    first = x.view(2, 2, 2, 4, 3, 4)[:, :, 0]  # (B, G, k, H, W)
    expected = torch.sigmoid(module.channel_weight * first.mean((3, 4)) + module.channel_bias)
    torch.testing.assert_close(channel, expected)
    second = x.view(2, 2, 2, 4, 3, 4)[:, :, 1].reshape(2, 8, 3, 4)
    gn = F.group_norm(second, 8, module.norm_weight.repeat(2), module.norm_bias.repeat(2), module.eps)
    scale, shift = (
        module.spatial_weight.repeat(2).view(1, 8, 1, 1),
        module.spatial_bias.repeat(2).view(1, 8, 1, 1),
    )
    gate = torch.sigmoid(scale * gn + shift)
    torch.testing.assert_close(spatial, gate.mean(1, keepdim=True), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("channels", "options", "message"),
    [
        (15, {}, "ShuffleAttention needs an even number of channels, got 15"),
        (32, {"groups": 0}, "groups must be an integer >= 1, got 0"),
        (32, {"eps": -1.0}, r"eps must be a number in \[0.0, 1.0\), got -1.0"),
    ],
)
def test_option_validation(channels, options, message):
    with pytest.raises(ValueError, match=message):
        ShuffleAttention(channels, **options)


def test_parameters_start_as_in_the_paper():
    module = ShuffleAttention(32, groups=4)
    assert torch.all(module.channel_weight == 0) and torch.all(module.channel_bias == 1)
    assert torch.all(module.spatial_weight == 0) and torch.all(module.spatial_bias == 1)
    assert isinstance(module.gate, nn.Sigmoid)
