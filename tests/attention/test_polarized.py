"""Polarized self-attention against a float64 einsum re-implementation of the paper's
equations (parallel and sequential layouts), the recorded maps, and option checks."""

from __future__ import annotations

import copy

import pytest
import torch
from attnkit import perturbed
from torch import Tensor

from visattn import record_attention
from visattn.attention.polarized import PolarizedSelfAttention


def linear(x: Tensor, layer: torch.nn.Linear) -> Tensor:
    """A 1x1 convolution on (B, C, H, W) with the layer's weight."""
    out = torch.einsum("oc,bchw->bohw", layer.weight, x)
    return out if layer.bias is None else out + layer.bias.view(1, -1, 1, 1)


def a_ch(m: PolarizedSelfAttention, x: Tensor) -> Tensor:
    """Channel-only branch: softmax over positions of W_q, weighted sum of W_v, W_z, LayerNorm, sigmoid."""
    scores = linear(x, m.ch_query).flatten(1)  # (B, N)
    weights = torch.exp(scores - scores.amax(1, keepdim=True))
    weights = weights / weights.sum(1, keepdim=True)
    pooled = torch.einsum("bcn,bn->bc", linear(x, m.ch_value).flatten(2), weights)  # (B, C/2)
    z = pooled @ m.ch_out.weight.T + (0 if m.ch_out.bias is None else m.ch_out.bias)  # (B, C)
    ln = m.ch_norm
    z = (z - z.mean(1, keepdim=True)) / torch.sqrt(z.var(1, correction=0, keepdim=True) + ln.eps)
    return torch.sigmoid(z * ln.weight + ln.bias)


def a_sp(m: PolarizedSelfAttention, x: Tensor) -> Tensor:
    """Spatial-only branch: softmax over channels of the pooled W_q', dot W_v' at every position, sigmoid."""
    q = linear(x, m.sp_query).mean((2, 3)).softmax(1)  # (B, C/2)
    return torch.sigmoid(torch.einsum("bc,bchw->bhw", q, linear(x, m.sp_key))).unsqueeze(1)


def reference(module: PolarizedSelfAttention, x: Tensor) -> Tensor:
    m = copy.deepcopy(module).double()
    x = x.double()
    y = a_ch(m, x)[:, :, None, None] * x
    if m.layout == "sequential":
        return a_sp(m, y) * y  # sequential: spatial gate on the channel-refined tensor
    return y + a_sp(m, x) * x  # parallel: sum of the two refined tensors


@pytest.mark.parametrize("layout", ["parallel", "sequential"])
@pytest.mark.parametrize("hw", [(7, 5), (8, 8), (1, 1), (2, 11)])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_float64_paper_equations(layout, hw, bias):
    module = perturbed(PolarizedSelfAttention(16, layout=layout, bias=bias), seed=7, scale=0.3)
    x = torch.randn(2, 16, *hw)
    with torch.no_grad():
        fused = module(x)
        with record_attention(module):
            explicit = module(x)
    expected = reference(module, x)
    torch.testing.assert_close(fused.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(explicit.double(), expected, atol=1e-5, rtol=1e-5)


def test_odd_channels_use_floor_half():
    module = perturbed(PolarizedSelfAttention(9), seed=7, scale=0.3)
    assert module.ch_value.out_features == 4
    x = torch.randn(1, 9, 4, 3)
    with torch.no_grad():
        torch.testing.assert_close(module(x).double(), reference(module, x), atol=1e-5, rtol=1e-5)


def test_maps_are_the_gates_and_the_position_softmax():
    module = perturbed(PolarizedSelfAttention(16), seed=7, scale=0.3)
    x = torch.randn(2, 16, 5, 6)
    with torch.no_grad(), record_attention(module) as maps:
        out = module(x)
    name = "PolarizedSelfAttention"
    assert set(maps) == {f"{name}:positions", f"{name}:channel", f"{name}:spatial"}
    channel, spatial, positions = (maps[f"{name}:{p}"] for p in ("channel", "spatial", "positions"))
    assert maps.kind(f"{name}:positions") == "softmax" and maps.grid(f"{name}:positions") == (5, 6)
    assert positions.shape == (2, 1, 1, 30) and channel.shape == (2, 16) and spatial.shape == (2, 1, 5, 6)
    torch.testing.assert_close(out, x * channel[:, :, None, None] + x * spatial)
    m = copy.deepcopy(module).double()
    torch.testing.assert_close(channel.double(), a_ch(m, x.double()), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(spatial.double(), a_sp(m, x.double()), atol=1e-6, rtol=1e-5)
    expected = torch.softmax(linear(x, module.ch_query).flatten(1), 1)
    torch.testing.assert_close(positions.view(2, 30), expected)


def test_sequential_spatial_gate_sees_the_channel_refined_input():
    module = perturbed(PolarizedSelfAttention(16, layout="sequential"), seed=7, scale=0.3)
    x = torch.randn(1, 16, 4, 4)
    with torch.no_grad(), record_attention(module) as maps:
        out = module(x)
    name = "PolarizedSelfAttention"
    y = x * maps[f"{name}:channel"][:, :, None, None]
    torch.testing.assert_close(out, y * maps[f"{name}:spatial"])
    m = copy.deepcopy(module).double()
    torch.testing.assert_close(maps[f"{name}:spatial"].double(), a_sp(m, y.double()), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("channels", "options", "message"),
    [
        (16, {"layout": "p"}, "layout must be one of 'parallel', 'sequential', got 'p'"),
        (1, {}, "channels must be an integer >= 2, got 1"),
    ],
)
def test_option_validation(channels, options, message):
    with pytest.raises(ValueError, match=message):
        PolarizedSelfAttention(channels, **options)
