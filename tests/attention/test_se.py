"""Squeeze-and-Excitation ("se") against timm's SEModule and torchvision's SqueezeExcitation with
the same weights; the paper's hidden width by default, timm's rounding with round_to=8."""

from __future__ import annotations

import pytest
import torch
from timm.layers import SEModule
from torch import nn
from torchvision.ops import SqueezeExcitation

from visattn import record_attention
from visattn.attention.se import SqueezeExcite

SIZES = [(1, 1), (7, 5), (16, 16), (33, 17)]


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def copy_from_convs(ours: SqueezeExcite, fc1: nn.Conv2d, fc2: nn.Conv2d) -> None:
    """The references hold 1x1 convolutions; ours holds linear layers of the same weights."""
    with torch.no_grad():
        ours.fc1.weight.copy_(fc1.weight[:, :, 0, 0])
        ours.fc1.bias.copy_(fc1.bias)
        ours.fc2.weight.copy_(fc2.weight[:, :, 0, 0])
        ours.fc2.bias.copy_(fc2.bias)


@pytest.mark.parametrize("channels", [16, 32, 64, 200])
@pytest.mark.parametrize(
    ("act", "gate", "timm_gate"),
    [(nn.ReLU, nn.Sigmoid, "sigmoid"), (nn.SiLU, nn.Hardsigmoid, "hard_sigmoid")],
    ids=["relu-sigmoid", "silu-hardsigmoid"],
)
def test_round_to_8_matches_timm_se_module(channels, act, gate, timm_gate):
    ref = SEModule(channels, act_layer=act, gate_layer=timm_gate).eval()
    ours = SqueezeExcite(channels, round_to=8, act_layer=act, gate_layer=gate).eval()
    assert ours.hidden == ref.fc1.out_channels
    copy_from_convs(ours, ref.fc1, ref.fc2)
    with torch.no_grad():
        for hw in SIZES:
            x = torch.randn(2, channels, *hw)
            close(ours(x), ref(x))


def test_paper_width_by_default_differs_from_timm_where_timm_rounds():
    assert SqueezeExcite(256).hidden == 16
    assert SqueezeExcite(16).hidden == 8  # floor min_hidden: 16 // 16 = 1 is too narrow
    assert SqueezeExcite(16, min_hidden=1).hidden == 1
    # C = 200: the paper gives 200 // 16 = 12, timm rounds 12.5 to 16.
    assert SqueezeExcite(200).hidden == 12 and SEModule(200).fc1.out_channels == 16
    assert SqueezeExcite(200, round_to=8).hidden == 16


@pytest.mark.parametrize(("channels", "reduction"), [(64, 16), (48, 4), (24, 16)])
def test_matches_torchvision_squeeze_excitation(channels, reduction):
    ours = SqueezeExcite(channels, reduction=reduction, min_hidden=1).eval()
    ref = SqueezeExcitation(channels, channels // reduction).eval()
    assert ours.hidden == channels // reduction
    copy_from_convs(ours, ref.fc1, ref.fc2)
    with torch.no_grad():
        for hw in SIZES:
            x = torch.randn(3, channels, *hw)
            close(ours(x), ref(x))


def test_map_is_the_gate_that_multiplies_the_input():
    module = SqueezeExcite(32).eval()
    x = torch.randn(2, 32, 6, 9)
    with torch.no_grad(), record_attention(module) as maps:
        out = module(x)
    gate = maps["SqueezeExcite"]
    assert maps.kind("SqueezeExcite") == "channel" and gate.shape == (2, 32)
    close(out, x * gate[:, :, None, None])
    # The gate is a function of the channel means only: sigmoid(fc2(relu(fc1(mean)))).
    expected = torch.sigmoid(module.fc2(torch.relu(module.fc1(x.mean((2, 3))))))
    close(gate, expected)


@pytest.mark.parametrize(
    ("option", "value"),
    [("reduction", 0), ("min_hidden", 0), ("round_to", 0), ("round_to", 2.5), ("hidden", 0)],
)
def test_option_validation(option, value):
    with pytest.raises(ValueError, match=rf"{option} must be an integer >= 1, got {value!r}"):
        SqueezeExcite(32, **{option: value})
