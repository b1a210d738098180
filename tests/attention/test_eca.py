"""Efficient Channel Attention ("eca") against timm's EcaModule with the same weights, the
paper's adaptive kernel size, and a float64 loop over channels of the paper's gate.

timm clamps the adaptive kernel size to at least 3; the paper's rule gives 1 for C < 8.
min_kernel_size=3 reproduces timm; by default, at C < 8, our module equals timm's with its
two side taps set to zero."""

from __future__ import annotations

import math

import pytest
import torch
from timm.layers import EcaModule

from visattn import record_attention
from visattn.attention.eca import EfficientChannelAttention, eca_kernel_size

SIZES = [(1, 1), (7, 5), (16, 16), (33, 17)]


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def matched(ours: EfficientChannelAttention, ref: EcaModule) -> None:
    assert ours.kernel_size == ref.conv.kernel_size[0]
    assert ours.conv.padding == ref.conv.padding
    with torch.no_grad():
        ref.conv.weight.normal_()
        ours.conv.weight.copy_(ref.conv.weight)


@pytest.mark.parametrize("channels", [16, 64, 256])
def test_matches_timm_eca_module(channels):
    ref = EcaModule(channels).eval()
    ours = EfficientChannelAttention(channels).eval()
    matched(ours, ref)
    with torch.no_grad():
        for hw in SIZES:
            x = torch.randn(2, channels, *hw)
            close(ours(x), ref(x))


def test_explicit_kernel_size_matches_timm():
    ref = EcaModule(None, kernel_size=7).eval()  # timm uses kernel_size only without channels
    ours = EfficientChannelAttention(48, kernel_size=7).eval()
    matched(ours, ref)
    with torch.no_grad():
        for hw in [(7, 5), (9, 9)]:
            x = torch.randn(2, 48, *hw)
            close(ours(x), ref(x))


def test_adaptive_kernel_size_follows_the_paper():
    # (log2(C) + 1) / 2, truncated, then the next odd number if even.
    expected = {1: 1, 2: 1, 4: 1, 8: 3, 16: 3, 32: 3, 64: 3, 128: 5, 256: 5, 512: 5, 1024: 5, 2048: 7}
    for c, k in expected.items():
        assert EfficientChannelAttention(c).kernel_size == k, c
    assert eca_kernel_size(512, gamma=1.0, beta=0.0) == 9  # log2(512) = 9
    assert eca_kernel_size(1000, gamma=3.0, beta=2.0) == 3  # (9.97 + 2) / 3 = 3.99 -> 3


def test_min_kernel_size_3_reproduces_timm_for_every_width():
    for c in range(1, 4097):
        assert eca_kernel_size(c, min_kernel_size=3) == EcaModule(c).conv.kernel_size[0], c
        paper = eca_kernel_size(c)
        assert paper == (1 if c < 8 else EcaModule(c).conv.kernel_size[0]), c


def test_below_8_channels_the_paper_kernel_is_timms_centre_tap():
    ref = EcaModule(4).eval()
    clamped = EfficientChannelAttention(4, min_kernel_size=3).eval()
    paper = EfficientChannelAttention(4).eval()
    assert paper.kernel_size == 1 and clamped.kernel_size == 3
    matched(clamped, ref)
    x = torch.randn(3, 4, 5, 6)
    with torch.no_grad():
        close(clamped(x), ref(x))
        paper.conv.weight.copy_(ref.conv.weight[:, :, 1:2])
        assert (paper(x) - ref(x)).abs().max() > 1e-3  # the side taps matter ...
        ref.conv.weight[:, :, [0, 2]] = 0
        close(paper(x), ref(x))  # ... and are all that differs


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_gate_equals_a_float64_loop_over_channels(kernel_size):
    """g_c = sigmoid(sum_j w_j * mean(x_{c + j - p})), zero outside the channel range."""
    channels = 9
    module = EfficientChannelAttention(channels, kernel_size=kernel_size).eval()
    with torch.no_grad():
        module.conv.weight.normal_()
    x = torch.randn(2, channels, 4, 7)
    w = module.conv.weight.double().flatten().tolist()
    means = x.double().mean((2, 3))
    pad = (kernel_size - 1) // 2
    expected = torch.empty(2, channels, dtype=torch.float64)
    for b in range(2):
        for c in range(channels):
            total = 0.0
            for j in range(kernel_size):
                src = c + j - pad
                if 0 <= src < channels:
                    total += w[j] * means[b, src].item()
            expected[b, c] = 1 / (1 + math.exp(-total))
    with torch.no_grad(), record_attention(module) as maps:
        out = module(x)
    gate = maps["EfficientChannelAttention"]
    assert maps.kind("EfficientChannelAttention") == "channel" and gate.shape == (2, channels)
    close(gate.double(), expected)
    close(out, x * gate[:, :, None, None])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kernel_size": 4}, "kernel_size must be an odd integer >= 1, got 4"),
        ({"kernel_size": 0}, "kernel_size must be an odd integer >= 1, got 0"),
        ({"min_kernel_size": 2}, "min_kernel_size must be an odd integer >= 1, got 2"),
        ({"gamma": 0}, "gamma must be a finite number > 0, got 0"),
        ({"gamma": -2.0}, "gamma must be a finite number > 0, got -2.0"),
        ({"beta": float("nan")}, "beta must be a finite number, got nan"),
    ],
)
def test_option_validation(options, message):
    with pytest.raises(ValueError, match=message):
        EfficientChannelAttention(32, **options)
