"""CBAM against timm's CbamModule with the same weights; the paper's default (no BatchNorm after
the 7 x 7 convolution, width ``C // r``) and where it differs from timm; maps and options."""

from __future__ import annotations

import pytest
import torch
from timm.layers.cbam import CbamModule
from torch import nn

from visattn import record_attention
from visattn.attention.cbam import CBAM


def randomise_bn(bn: nn.BatchNorm2d) -> None:
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0, 0.3)
        bn.running_mean.normal_(0, 0.3)
        bn.running_var.uniform_(0.5, 1.5)


def copy_into_timm(ours: CBAM, theirs: CbamModule) -> None:
    """Parameter names mapped explicitly: our Linear MLP -> timm's 1x1 convolutions."""
    with torch.no_grad():
        theirs.channel.fc1.weight.copy_(ours.mlp[0].weight[:, :, None, None])
        theirs.channel.fc2.weight.copy_(ours.mlp[2].weight[:, :, None, None])
        theirs.spatial.conv.conv.weight.copy_(ours.conv.weight)
        if isinstance(ours.norm, nn.BatchNorm2d):
            bn = theirs.spatial.conv.bn
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(bn, name).copy_(getattr(ours.norm, name))


def timm_width(channels: int) -> int:
    return CbamModule(channels).channel.fc1.out_channels


@pytest.mark.parametrize("channels", [32, 48])
def test_matches_timm_with_batchnorm_option(channels):
    width = timm_width(channels)
    ours = CBAM(channels, hidden=width, spatial_norm=nn.BatchNorm2d)
    randomise_bn(ours.norm)
    ours.eval()
    theirs = CbamModule(channels).eval()
    copy_into_timm(ours, theirs)
    for hw in [(7, 5), (16, 16), (1, 1), (9, 13)]:
        x = torch.randn(3, channels, *hw)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_default_differs_from_timm_only_by_the_batchnorm():
    """The paper's default has no BatchNorm: with timm's BN set to the identity (and our conv
    bias at zero) the two agree; with a non-trivial BN they do not."""
    ours = CBAM(32, min_hidden=1).eval()
    assert ours.hidden == timm_width(32) == 2
    assert ours.conv.bias is not None and isinstance(ours.norm, nn.Identity)
    theirs = CbamModule(32).eval()
    copy_into_timm(ours, theirs)
    bn = theirs.spatial.conv.bn
    with torch.no_grad():
        ours.conv.bias.zero_()
        bn.running_var.fill_(1 - bn.eps)  # (x - 0) / sqrt(var + eps) == x
    x = torch.randn(2, 32, 11, 6)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-6, rtol=1e-5)
        randomise_bn(bn)
        assert (ours(x) - theirs(x)).abs().max() > 1e-2


def test_hidden_width_floor_and_timm_rounding():
    assert CBAM(40, min_hidden=1).hidden == 40 // 16 == 2
    assert timm_width(40) == 3  # timm rounds 40 / 16 = 2.5 up
    assert CBAM(40).hidden == 8  # the documented floor
    assert CBAM(512).hidden == 32  # floor inactive: the paper's C // r
    assert CBAM(40, hidden=3).mlp[0].out_features == 3


def test_maps_are_the_gates_applied():
    module = CBAM(16, min_hidden=2).eval()
    x = torch.randn(2, 16, 6, 9)
    with torch.no_grad(), record_attention(module) as maps:
        out = module(x)
    assert set(maps) == {"CBAM:channel", "CBAM:spatial"}
    channel, spatial = maps["CBAM:channel"], maps["CBAM:spatial"]
    assert maps.kind("CBAM:channel") == "channel" and channel.shape == (2, 16)
    assert maps.kind("CBAM:spatial") == "spatial" and spatial.shape == (2, 1, 6, 9)
    torch.testing.assert_close(out, x * channel[:, :, None, None] * spatial)
    # The channel gate follows Eq. (2) computed here from the raw weights.
    w0, w1 = module.mlp[0].weight, module.mlp[2].weight
    expected = torch.sigmoid(
        torch.relu(x.mean((2, 3)) @ w0.T) @ w1.T + torch.relu(x.amax((2, 3)) @ w0.T) @ w1.T
    )
    torch.testing.assert_close(channel, expected)


def test_spatial_gate_sees_mean_then_max():
    """Swapping the two input planes of the convolution changes the result: the order is the
    paper's [average; max]."""
    module = CBAM(16).eval()
    x = torch.randn(1, 16, 5, 5)
    with torch.no_grad(), record_attention(module) as maps:
        module(x)
        refined = x * maps["CBAM:channel"][:, :, None, None]
        planes = torch.cat([refined.mean(1, keepdim=True), refined.amax(1, keepdim=True)], 1)
        expected = torch.sigmoid(module.conv(planes))
    torch.testing.assert_close(maps["CBAM:spatial"], expected)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kernel_size": 4}, "kernel_size must be an odd integer >= 1, got 4"),
        ({"kernel_size": 0}, "kernel_size must be an odd integer >= 1, got 0"),
        ({"reduction": 0}, "reduction must be an integer >= 1, got 0"),
        ({"min_hidden": 0}, "min_hidden must be an integer >= 1, got 0"),
        ({"hidden": 0}, "hidden must be an integer >= 1, got 0"),
    ],
)
def test_option_validation(options, message):
    with pytest.raises(ValueError, match=message):
        CBAM(32, **options)
