"""BAM against a float64 re-implementation of the paper's Eq. (1)-(4) written here (dilated
convolutions as explicit sums of shifted taps, BatchNorm from its running statistics), plus
properties of the gate: sum of the branches, residual, full-H x W pooling, recorded map."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from attnkit import perturbed
from torch import Tensor, nn

from visattn import record_attention
from visattn.attention.bam import BAM


def bn(x: Tensor, m: nn.BatchNorm2d) -> Tensor:
    """Inference BatchNorm over dim 1 of a (B, C, ...) tensor."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale = (m.weight / torch.sqrt(m.running_var + m.eps)).view(shape)
    return (x - m.running_mean.view(shape)) * scale + m.bias.view(shape)


def pointwise(x: Tensor, conv: nn.Conv2d) -> Tensor:
    out = torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], x)
    return out if conv.bias is None else out + conv.bias.view(1, -1, 1, 1)


def dilated3x3(x: Tensor, conv: nn.Conv2d, d: int) -> Tensor:
    """Sum over the nine taps at offsets (-d, 0, d) of a zero-padded input."""
    _, _, h, w = x.shape
    padded = F.pad(x, (d, d, d, d))
    out = 0
    for i in range(3):
        for j in range(3):
            window = padded[:, :, i * d : i * d + h, j * d : j * d + w]
            out = out + torch.einsum("oc,bchw->bohw", conv.weight[:, :, i, j], window)
    return out


def reference(module: BAM, x: Tensor) -> Tensor:
    m = copy.deepcopy(module).double()
    x = x.double()
    h, w = x.shape[-2:]
    fc1, _, fc2, bn_c = m.channel_branch
    pooled = x.sum((2, 3), keepdim=True) / (h * w)  # AvgPool over all of H x W
    mc = bn(pointwise(torch.relu(pointwise(pooled, fc1)), fc2), bn_c)  # (B, C, 1, 1)
    s = m.spatial_branch
    f = torch.relu(bn(pointwise(x, s[0]), s[1]))
    f = torch.relu(bn(dilated3x3(f, s[3], m.dilation), s[4]))
    f = torch.relu(bn(dilated3x3(f, s[6], m.dilation), s[7]))
    ms = bn(pointwise(f, s[9]), s[10])  # (B, 1, H, W)
    gate = 1 / (1 + torch.exp(-(mc + ms)))  # M(F): the sum of the branches, not their product
    return x + x * gate  # F' = F + F * M(F)


@pytest.mark.parametrize("channels", [16, 48])
@pytest.mark.parametrize("hw", [(7, 5), (12, 12), (1, 1), (3, 10)])
def test_matches_float64_paper_equations(channels, hw):
    module = perturbed(BAM(channels, min_hidden=2), seed=1)
    x = torch.randn(2, channels, *hw)
    with torch.no_grad():
        out = module(x)
    torch.testing.assert_close(out.double(), reference(module, x), atol=1e-5, rtol=1e-5)


def test_other_dilation_matches_reference():
    module = perturbed(BAM(32, dilation=2), seed=1)
    x = torch.randn(1, 32, 9, 6)
    with torch.no_grad():
        torch.testing.assert_close(module(x).double(), reference(module, x), atol=1e-5, rtol=1e-5)


def test_map_is_channel_mean_of_the_gate_applied():
    module = perturbed(BAM(32), seed=1)
    x = (torch.rand(2, 32, 6, 8) + 0.5) * torch.randn(2, 32, 6, 8).sign()  # |x| >= 0.5: safe to divide
    with torch.no_grad(), record_attention(module) as maps:
        out = module(x)
    (key,) = maps
    assert maps.kind(key) == "spatial" and maps[key].shape == (2, 1, 6, 8)
    gate = out / x - 1  # y = x (1 + M)
    torch.testing.assert_close(maps[key], gate.mean(1, keepdim=True), atol=1e-4, rtol=1e-4)
    assert gate.min() >= -1e-5 and gate.max() <= 1 + 1e-5


def test_pooling_covers_all_rows_and_columns():
    """A change in the last column moves the channel branch (a square H x H pool would not
    see columns beyond H); the spatial branch is made blind to it by zeroing its weights."""
    module = perturbed(BAM(16), seed=1)
    with torch.no_grad():
        module.spatial_branch[-1].weight.zero_()
    x = torch.randn(1, 16, 3, 8)
    y = x.clone()
    y[:, :, :, -1] += 5.0
    with torch.no_grad(), record_attention(module) as maps:
        module(x)
        module(y)
    first, second = maps.values()
    assert (first - second).abs().max() > 1e-3


def test_hidden_width_floor():
    assert BAM(64).hidden == 8 and BAM(64, min_hidden=1).hidden == 4 and BAM(512).hidden == 32


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dilation": 0}, "dilation must be an integer >= 1, got 0"),
        ({"reduction": -2}, "reduction must be an integer >= 1, got -2"),
        ({"min_hidden": 1.5}, "min_hidden must be an integer >= 1, got 1.5"),
    ],
)
def test_option_validation(options, message):
    with pytest.raises(ValueError, match=message):
        BAM(32, **options)
