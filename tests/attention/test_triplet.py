"""Triplet attention against a float64 re-implementation of the paper's rotate-gate-rotate-back
formulation (explicit permutes, Z-pool, convolution, inference BatchNorm, sigmoid, average of
the three gated tensors), plus the recorded maps and option checks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from attnkit import perturbed
from torch import Tensor, nn

from visattn import record_attention
from visattn.attention.triplet import TripletAttention


def branch_gate(t: Tensor, branch: nn.Module) -> Tensor:
    """The paper's branch on an already rotated tensor ``t`` (B, D, P, Q): Z-pool over D,
    convolution, BatchNorm with running statistics, sigmoid; returns the (B, 1, P, Q) gate."""
    pooled = torch.cat([t.max(dim=1, keepdim=True).values, t.mean(dim=1, keepdim=True)], dim=1)
    z = F.conv2d(pooled, branch.conv.weight, padding=branch.conv.kernel_size[0] // 2)
    bn = branch.norm
    z = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    return 1 / (1 + torch.exp(-z))


def gate_rotated(t: Tensor, branch: nn.Module) -> Tensor:
    return t * branch_gate(t, branch)


def reference(module: TripletAttention, x: Tensor) -> Tensor:
    m = copy.deepcopy(module).double()
    x = x.double()
    out_cw = gate_rotated(x.permute(0, 2, 1, 3), m.cw).permute(0, 2, 1, 3)  # rotate to (B, H, C, W)
    out_ch = gate_rotated(x.permute(0, 3, 2, 1), m.ch).permute(0, 3, 2, 1)  # rotate to (B, W, H, C)
    if m.hw is None:
        return (out_cw + out_ch) / 2
    return (out_cw + out_ch + gate_rotated(x, m.hw)) / 3


@pytest.mark.parametrize("hw", [(7, 5), (16, 16), (1, 1), (3, 12)])
@pytest.mark.parametrize("channels", [16, 24])
def test_matches_float64_rotation_reference(hw, channels):
    module = perturbed(TripletAttention(channels), seed=3)
    x = torch.randn(2, channels, *hw)
    with torch.no_grad():
        torch.testing.assert_close(module(x).double(), reference(module, x), atol=1e-5, rtol=1e-5)


def test_without_spatial_branch_and_other_kernel():
    module = perturbed(TripletAttention(16, spatial=False, kernel_size=3), seed=3)
    assert module.hw is None
    x = torch.randn(2, 16, 6, 9)
    with torch.no_grad():
        torch.testing.assert_close(module(x).double(), reference(module, x), atol=1e-5, rtol=1e-5)


def test_branches_see_the_right_planes():
    """Transposing the C-H branch's kernel changes the output (the branch is not blind to
    the plane's orientation), and the reference, which convolves the authors' rotated
    (H, C) plane, still agrees with the transposed weights."""
    module = perturbed(TripletAttention(16), seed=3)
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        base = module(x)
        module.ch.conv.weight.copy_(module.ch.conv.weight.transpose(2, 3).clone())
        assert (module(x) - base).abs().max() > 1e-4
        torch.testing.assert_close(module(x).double(), reference(module, x), atol=1e-5, rtol=1e-5)


def test_maps_are_the_three_gates():
    module = perturbed(TripletAttention(16), seed=3)
    x = torch.randn(2, 16, 5, 7)
    with torch.no_grad(), record_attention(module) as maps:
        out = module(x)
    prefix = "TripletAttention"
    assert set(maps) == {f"{prefix}:ch", f"{prefix}:cw", f"{prefix}:hw"}
    ch, cw, hw = maps[f"{prefix}:ch"], maps[f"{prefix}:cw"], maps[f"{prefix}:hw"]
    assert ch.shape == (2, 16, 5, 1) and cw.shape == (2, 16, 1, 7) and hw.shape == (2, 1, 5, 7)
    assert maps.kind(f"{prefix}:hw") == "spatial" and maps.kind(f"{prefix}:ch") == "gate"
    torch.testing.assert_close(out, x * (ch + cw + hw) / 3)
    # The H-W gate is the branch of the paper applied to the unrotated tensor.
    expected_hw = branch_gate(x.double(), copy.deepcopy(module.hw).double())
    torch.testing.assert_close(hw.double(), expected_hw, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kernel_size": 6}, "kernel_size must be an odd integer >= 1, got 6"),
        ({"kernel_size": -1}, "kernel_size must be an odd integer >= 1, got -1"),
    ],
)
def test_option_validation(options, message):
    with pytest.raises(ValueError, match=message):
        TripletAttention(32, **options)
