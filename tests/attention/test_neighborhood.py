"""Neighborhood attention against a masked full attention written here in float64.

NATTEN has no CPU kernels, so the reference is built from NATTEN's own boundary rules
(``get_window_start`` and ``get_pb_start`` of its naive CPU kernels, re-stated below) where
NATTEN defines them (axis length >= kernel * dilation); on shorter axes each query attends to
every position of its dilation group, our documented rule.
"""

from __future__ import annotations

import math

import pytest
import torch
from attnkit import assert_window_map_is

from visattn import record_attention
from visattn.attention.neighborhood import NeighborhoodAttention

C, HEADS = 16, 2


def natten_window_start(i: int, length: int, k: int, d: int) -> int:
    r = k // 2
    if d <= 1:
        return max(i - r, 0) + (i + r >= length) * (length - i - r - 1)
    if i - r * d < 0:
        return i % d
    if i + r * d >= length:
        a = (length // d) * d
        b = length - a
        return length - b + i % d - 2 * r * d if i % d < b else a + i % d - k * d
    return i - r * d


def natten_pb_start(i: int, length: int, k: int, d: int) -> int:
    r = k // 2
    if d <= 1:
        return r + (i < r) * (r - i) + (i + r >= length) * (length - i - 1 - r)
    if i - r * d < 0:
        return k - 1 - i // d
    if i + r * d >= length:
        return (length - i - 1) // d
    return r


def neighbours_1d(i: int, length: int, k: int, d: int) -> list[tuple[int, int]]:
    """(position, bias row) of each neighbour of ``i`` along one axis."""
    if length >= k * d:
        start, pb = natten_window_start(i, length, k, d), natten_pb_start(i, length, k, d)
        return [(start + a * d, pb + a) for a in range(k)]
    group = range(i % d, length, d)  # fewer than k positions: all of them
    return [(p, (p - i) // d + k - 1) for p in group]


def masked_full_attention(module: NeighborhoodAttention, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Float64 attention over all N positions, each query masked to its neighbourhood and
    given the NAT bias by hand; returns the output and the (B, heads, N, N) weights."""
    x = x.double()
    B, _, H, W = x.shape
    k, d = module.kernel_size, module.dilation
    rpb = module.rpb.double()
    allowed = torch.zeros(H * W, H * W, dtype=torch.bool)
    bias = torch.zeros(HEADS, H * W, H * W, dtype=torch.float64)
    for qy in range(H):
        for qx in range(W):
            for ky, by in neighbours_1d(qy, H, k, d):
                for kx, bx in neighbours_1d(qx, W, k, d):
                    allowed[qy * W + qx, ky * W + kx] = True
                    bias[:, qy * W + qx, ky * W + kx] = rpb[:, by, bx]
    tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
    qkv = tokens @ module.qkv.weight.double().T + module.qkv.bias.double()
    q, kk, v = qkv.view(B, H * W, 3, HEADS, C // HEADS).permute(2, 0, 3, 1, 4)  # (B, heads, N, d)
    scores = q @ kk.transpose(-1, -2) / math.sqrt(C // HEADS) + bias
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)  # (B, heads, N, N)
    out = (weights @ v).transpose(1, 2).reshape(B, H * W, C)
    out = out @ module.proj.weight.double().T + module.proj.bias.double()
    return out.transpose(1, 2).reshape(B, C, H, W), weights


def make(**options) -> NeighborhoodAttention:
    module = NeighborhoodAttention(C, heads=HEADS, residual=False, **options).eval()
    with torch.no_grad():  # a visible bias: the default initialisation is tiny
        module.rpb.normal_(0, 1)
    return module


CASES = [
    (3, 1, (9, 11)),
    (5, 1, (6, 7)),
    (7, 1, (7, 7)),
    (7, 1, (5, 9)),  # H smaller than the kernel
    (3, 2, (12, 10)),
    (3, 3, (9, 11)),  # 11 = 3 * 3 + 2: unequal dilation groups at the border
    (5, 2, (13, 8)),  # W < kernel * dilation: whole dilation groups
    (3, 2, (2, 3)),
    (7, 1, (1, 1)),
]


@pytest.mark.parametrize(("kernel", "dilation", "hw"), CASES, ids=lambda v: str(v))
def test_matches_masked_full_attention(kernel, dilation, hw):
    module = make(kernel_size=kernel, dilation=dilation)
    x = torch.randn(2, C, *hw)
    with torch.no_grad():
        fused = module(x)
        with record_attention(module) as maps:
            explicit = module(x)
    expected, expected_w = masked_full_attention(module, x)
    torch.testing.assert_close(fused.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-5)
    # The map, scattered back to (N, N) through its keys, is the reference's weights.
    assert_window_map_is(maps, hw, kernel * kernel, expected_w)


def test_float64_module_matches_reference_tightly():
    module = make(kernel_size=3, dilation=2).double()
    x = torch.randn(1, C, 7, 9, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(module(x), masked_full_attention(module, x)[0], atol=1e-12, rtol=1e-10)


def test_every_query_keeps_a_full_neighbourhood_when_the_map_is_large_enough():
    module = make(kernel_size=5, dilation=2)
    with torch.no_grad(), record_attention(module) as maps:
        module(torch.randn(1, C, 10, 11))
    keys = maps.keys_index("NeighborhoodAttention")
    assert keys.min() >= 0 and all(len(set(row.tolist())) == 25 for row in keys)


def test_kernel_one_attends_to_itself():
    module = make(kernel_size=1)
    x = torch.randn(2, C, 4, 5)
    tokens = x.flatten(2).transpose(1, 2)
    v = module.qkv(tokens)[..., 2 * C :]
    with torch.no_grad():
        expected = module.proj(v).transpose(1, 2).reshape(2, C, 4, 5)
        torch.testing.assert_close(module(x), expected, atol=1e-6, rtol=1e-5)


def test_residual_adds_the_input():
    module = make()
    with_residual = NeighborhoodAttention(C, heads=HEADS).eval()
    with_residual.load_state_dict(module.state_dict())
    x = torch.randn(2, C, 6, 9)
    with torch.no_grad():
        torch.testing.assert_close(with_residual(x), x + module(x))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kernel_size": 4}, "kernel_size must be an odd integer >= 1, got 4"),
        ({"kernel_size": 0}, "kernel_size must be an odd integer >= 1, got 0"),
        ({"dilation": 0}, "dilation must be an integer >= 1, got 0"),
        ({"heads": 3}, r"heads must divide channels \(32\) when head_dim is not given, got 3"),
        ({"attn_drop": 1.5}, r"attn_drop must be a number in \[0.0, 1.0\), got 1.5"),
        ({"proj_drop": -1}, r"proj_drop must be a number in \[0.0, 1.0\), got -1"),
    ],
)
def test_option_validation(options, message):
    with pytest.raises(ValueError, match=message):
        NeighborhoodAttention(32, **options)
