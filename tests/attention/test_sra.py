"""Spatial-reduction attention (PVT v2) against timm's pvt_v2.Attention and a float64 reference
for the padding at sizes that are not multiples of the reduction ratio."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from timm.models.pvt_v2 import Attention as TimmPvtAttention

from visattn import record_attention
from visattn.attention.sra import SpatialReductionAttention, adaptive_mean_matrix


def _perturb(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)


def timm_like(module: SpatialReductionAttention) -> TimmPvtAttention:
    """timm's PVT v2 attention holding the same weights (names mapped one by one)."""
    ref = TimmPvtAttention(
        module.channels,
        num_heads=module.heads,
        sr_ratio=module.sr_ratio,
        linear_attn=module.reduction == "pool",
        qkv_bias=module.q.bias is not None,
    )
    mapping = {"q": "q", "kv": "kv", "proj": "proj"}
    if module.sr is not None:
        mapping.update({"sr": "sr", "norm": "norm"})
    ours = dict(module.named_parameters())
    with torch.no_grad():
        for name, p in ref.named_parameters():
            prefix, leaf = name.split(".")
            p.copy_(ours[f"{mapping[prefix]}.{leaf}"])
    return ref.eval()


@pytest.mark.parametrize(
    ("sr_ratio", "hw"),
    [(1, (5, 7)), (2, (8, 8)), (2, (6, 10)), (4, (8, 12)), (4, (4, 4))],
)
def test_matches_timm_at_multiples_of_the_ratio(sr_ratio, hw):
    module = SpatialReductionAttention(32, heads=4, sr_ratio=sr_ratio, residual=False)
    _perturb(module)
    module.eval()
    ref = timm_like(module)
    x = torch.randn(2, 32, *hw)
    tokens = x.flatten(2).transpose(1, 2)
    expected = ref(tokens, list(hw))
    out = module(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hw", [(7, 7), (14, 21), (9, 5), (3, 2), (1, 1)])
def test_linear_sra_matches_timm_at_any_size(hw):
    """The pooled keys of linear SRA: our averaging matrices give AdaptiveAvgPool2d(7)'s bins."""
    module = SpatialReductionAttention(16, heads=2, reduction="pool", residual=False)
    _perturb(module)
    module.eval()
    ref = timm_like(module)
    x = torch.randn(2, 16, *hw)
    expected = ref(x.flatten(2).transpose(1, 2), list(hw))
    torch.testing.assert_close(module(x).flatten(2).transpose(1, 2), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("size", "bins"), [(1, 7), (5, 7), (7, 7), (23, 7), (10, 3)])
def test_adaptive_mean_matrix_is_adaptive_average_pooling(size, bins):
    x = torch.randn(2, 3, size, size + 2, dtype=torch.float64)
    rows = adaptive_mean_matrix(size, bins, like=x)
    cols = adaptive_mean_matrix(size + 2, bins, like=x)
    torch.testing.assert_close(rows @ x @ cols.T, F.adaptive_avg_pool2d(x, bins))


def float64_reference(
    module: SpatialReductionAttention, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's equations with explicit zero padding of the map before the strided conv."""
    m = copy.deepcopy(module).double()
    x = x.double()
    B, C, H, W = x.shape
    r, h, d = m.sr_ratio, m.heads, m.head_dim
    tokens = x.flatten(2).transpose(1, 2)
    padded = torch.zeros(B, C, -(-H // r) * r, -(-W // r) * r, dtype=torch.float64)
    padded[:, :, :H, :W] = x
    reduced = F.conv2d(padded, m.sr.weight, m.sr.bias, stride=r).flatten(2).transpose(1, 2)
    reduced = F.layer_norm(reduced, (C,), m.norm.weight, m.norm.bias, m.norm.eps)
    q = (tokens @ m.q.weight.T + m.q.bias).unflatten(-1, (h, d)).transpose(1, 2)
    kv = reduced @ m.kv.weight.T + m.kv.bias
    k, v = (t.unflatten(-1, (h, d)).transpose(1, 2) for t in kv.chunk(2, dim=-1))
    weights = torch.softmax(q @ k.transpose(-2, -1) / d**0.5, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(B, H * W, C) @ m.proj.weight.T + m.proj.bias
    return out.transpose(1, 2).reshape(B, C, H, W), weights


@pytest.mark.parametrize(("sr_ratio", "hw"), [(2, (7, 5)), (4, (1, 1)), (4, (9, 6)), (3, (8, 8))])
def test_any_size_pads_the_map_with_zeros(sr_ratio, hw):
    module = SpatialReductionAttention(16, heads=2, sr_ratio=sr_ratio, residual=False)
    _perturb(module)
    module.eval()
    x = torch.randn(2, 16, *hw)
    expected, expected_w = float64_reference(module, x)
    fused = module(x)
    with record_attention(module) as maps:
        explicit = module(x)
    torch.testing.assert_close(fused.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-5)
    (key,) = maps
    grid = (-(-hw[0] // sr_ratio), -(-hw[1] // sr_ratio))
    assert maps.kind(key) == "softmax" and maps.grid(key) == grid
    assert maps[key].shape == (2, 2, hw[0] * hw[1], grid[0] * grid[1])
    torch.testing.assert_close(maps[key].double(), expected_w, atol=1e-6, rtol=1e-5)


def test_residual_adds_the_input_and_records_the_reduced_grid_for_pooling():
    module = SpatialReductionAttention(16, heads=4, reduction="pool", pool_size=3).eval()
    bare = copy.deepcopy(module)
    bare.residual = False
    x = torch.randn(1, 16, 10, 4)
    torch.testing.assert_close(module(x), x + bare(x))
    with record_attention(module) as maps:
        module(x)
    (key,) = maps
    assert maps.grid(key) == (3, 3) and maps[key].shape == (1, 4, 40, 9)


def test_fused_kernel_operands_are_contiguous_along_the_head_dimension(monkeypatch, fused_kernel):
    """q, k, v reach scaled_dot_product_attention with a unit last stride (else the CPU
    kernel silently materialises the N x N scores)."""
    module = SpatialReductionAttention(16, heads=2, sr_ratio=2).eval()
    seen = []
    original = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        seen.append([t.stride(-1) for t in (q, k, v)])
        return original(q, k, v, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    with torch.no_grad():  # with gradients, windows this small run the core's matmul kernel
        module(torch.randn(2, 16, 9, 6).to(memory_format=torch.channels_last))
    assert seen == [[1, 1, 1]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"heads": 3}, r"heads must divide channels \(16\), got 3"),
        ({"heads": 0}, "heads must be an integer >= 1, got 0"),
        ({"sr_ratio": 0}, "sr_ratio must be an integer >= 1, got 0"),
        ({"reduction": "avg"}, "reduction must be one of 'conv', 'pool', got 'avg'"),
        ({"pool_size": 0}, "pool_size must be an integer >= 1, got 0"),
        ({"attn_drop": 1.0}, r"attn_drop must be a number in \[0.0, 1.0\)"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpatialReductionAttention(16, **kwargs)
