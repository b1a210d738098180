"""Coordinate attention against timm's CoordAttn with the same weights (reached by options),
the documented default differences (biases, hidden width), the recorded map and options."""

from __future__ import annotations

import pytest
import torch
from attnkit import perturbed
from timm.layers.coord_attn import CoordAttn

from visattn import record_attention
from visattn.attention.coord import CoordinateAttention


def timm_like(ours: CoordinateAttention) -> CoordAttn:
    """timm's module holding our weights; parameter names mapped explicitly."""
    theirs = CoordAttn(ours.channels, rd_channels=ours.hidden, bias=ours.conv.bias is not None)
    pairs = [
        (theirs.conv1, ours.conv),
        (theirs.bn1, ours.norm),
        (theirs.conv_h, ours.conv_h),
        (theirs.conv_w, ours.conv_w),
    ]
    with torch.no_grad():
        for dst, src in pairs:
            for name, tensor in src.state_dict().items():
                dst.state_dict()[name].copy_(tensor)
    return theirs.eval()


def timm_width(channels: int) -> int:
    return CoordAttn(channels).conv1.out_channels


@pytest.mark.parametrize("channels", [32, 64])
def test_matches_timm_with_timm_options(channels):
    ours = CoordinateAttention(channels, hidden=timm_width(channels), bias=False)
    perturbed(ours)
    ours.eval()
    theirs = timm_like(ours)
    for hw in [(7, 5), (16, 16), (1, 1), (4, 11)]:
        x = torch.randn(3, channels, *hw)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_default_differs_from_timm_by_the_biases_only():
    """At C = 64 both widths are 8; with our biases zeroed the default equals timm."""
    ours = CoordinateAttention(64)
    assert ours.hidden == timm_width(64) == 8
    perturbed(ours)
    ours.eval()
    reference = CoordAttn(64, bias=False)
    with torch.no_grad():
        reference.conv1.weight.copy_(ours.conv.weight)
        reference.conv_h.weight.copy_(ours.conv_h.weight)
        reference.conv_w.weight.copy_(ours.conv_w.weight)
        reference.bn1.load_state_dict(ours.norm.state_dict())
    reference.eval()
    x = torch.randn(2, 64, 9, 6)
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max() > 1e-3
        for conv in (ours.conv, ours.conv_h, ours.conv_w):
            conv.bias.zero_()
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)


def test_hidden_width_rule():
    assert CoordinateAttention(512).hidden == 16 and timm_width(512) == 24
    assert CoordinateAttention(1024).hidden == 32
    assert CoordinateAttention(16).hidden == 8  # the floor
    assert CoordinateAttention(512, hidden=24).conv.out_channels == 24


def test_gates_keep_their_coordinate_and_map_is_their_product():
    module = CoordinateAttention(16).eval()
    perturbed(module)
    x = torch.randn(2, 16, 5, 7)
    with torch.no_grad(), record_attention(module) as maps:
        out = module(x)
        strips = torch.cat([x.mean(3), x.mean(2)], 2).unsqueeze(-1)
        f = module.act(module.norm(module.conv(strips)))
        a_h = torch.sigmoid(module.conv_h(f[:, :, :5]))  # (B, C, 5, 1)
        a_w = torch.sigmoid(module.conv_w(f[:, :, 5:])).transpose(2, 3)  # (B, C, 1, 7)
    torch.testing.assert_close(out, x * a_h * a_w)
    (key,) = maps
    assert maps.kind(key) == "spatial"
    torch.testing.assert_close(maps[key], (a_h * a_w).mean(1, keepdim=True))


def test_gate_along_h_follows_rows():
    """Permuting the rows of x permutes the output rows the same way (a_h is per row, a_w
    uses row means, which the permutation leaves unchanged)."""
    module = CoordinateAttention(16).eval()
    perturbed(module)
    x = torch.randn(1, 16, 6, 4)
    perm = torch.randperm(6)
    with torch.no_grad():
        torch.testing.assert_close(module(x[:, :, perm]), module(x)[:, :, perm], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"reduction": 0}, "reduction must be an integer >= 1, got 0"),
        ({"min_hidden": 0}, "min_hidden must be an integer >= 1, got 0"),
        ({"hidden": -1}, "hidden must be an integer >= 1, got -1"),
    ],
)
def test_option_validation(options, message):
    with pytest.raises(ValueError, match=message):
        CoordinateAttention(32, **options)
