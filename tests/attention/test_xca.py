"""Cross-covariance attention (XCiT) against timm's xcit.XCA on the flattened tokens, with the
same weights, and its recorded d x d map against the paper's equation in float64."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from timm.models.xcit import XCA

from visattn import record_attention
from visattn.attention.xca import CrossCovarianceAttention


def _perturbed(channels: int, **kwargs) -> CrossCovarianceAttention:
    module = CrossCovarianceAttention(channels, **kwargs)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        module.temperature.uniform_(0.5, 3.0)  # distinct per head
    return module.eval()


def timm_like(module: CrossCovarianceAttention) -> XCA:
    """timm's XCA (linear layers on tokens) holding our 1x1 convolutions' weights."""
    ref = XCA(module.channels, num_heads=module.heads, qkv_bias=module.qkv.bias is not None)
    with torch.no_grad():
        ref.temperature.copy_(module.temperature)
        ref.qkv.weight.copy_(module.qkv.weight[:, :, 0, 0])
        if module.qkv.bias is not None:
            ref.qkv.bias.copy_(module.qkv.bias)
        ref.proj.weight.copy_(module.proj.weight[:, :, 0, 0])
        ref.proj.bias.copy_(module.proj.bias)
    return ref.eval()


@pytest.mark.parametrize("hw", [(1, 1), (8, 8), (7, 5), (13, 4)])
@pytest.mark.parametrize(("channels", "heads", "qkv_bias"), [(32, 4, False), (16, 1, True), (24, 8, True)])
def test_matches_timm_xca(hw, channels, heads, qkv_bias):
    module = _perturbed(channels, heads=heads, qkv_bias=qkv_bias, residual=False)
    ref = timm_like(module)
    x = torch.randn(2, channels, *hw)
    tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
    with torch.no_grad():
        expected = ref(tokens)
        out = module(x).flatten(2).transpose(1, 2)
        with record_attention(module) as maps:
            explicit = module(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(explicit, expected, atol=1e-5, rtol=1e-5)
    (key,) = maps
    d = channels // heads
    assert maps.kind(key) == "softmax" and maps.grid(key) is None and maps[key].shape == (2, heads, d, d)


def test_map_is_the_softmax_of_the_scaled_cross_covariance():
    """Paper eq. 2-3 in float64: softmax(tau * q_hat^T k_hat) with q, k unit-norm over tokens."""
    module = _perturbed(16, heads=2, residual=False)
    x = torch.randn(2, 16, 5, 6)
    with record_attention(module) as maps:
        out = module(x)
    m = copy.deepcopy(module).double()
    qkv = torch.einsum("bchw,oc->bohw", x.double(), m.qkv.weight[:, :, 0, 0]).reshape(2, 3, 2, 8, 30)
    q, k, v = qkv.unbind(1)  # (B, h, d, N)
    q = q / q.norm(dim=-1, keepdim=True)
    k = k / k.norm(dim=-1, keepdim=True)
    weights = torch.softmax(m.temperature * (q @ k.transpose(-2, -1)), dim=-1)  # (B, h, d, d)
    torch.testing.assert_close(maps["CrossCovarianceAttention"].double(), weights, atol=1e-6, rtol=1e-5)
    mixed = (weights @ v).reshape(2, 16, 5, 6)
    expected = torch.einsum("bchw,oc->bohw", mixed, m.proj.weight[:, :, 0, 0]) + m.proj.bias[:, None, None]
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_attention_is_over_channels_so_positions_are_permutation_equivariant():
    module = _perturbed(16, heads=4)
    x = torch.randn(2, 16, 4, 5)
    perm = torch.randperm(20)
    out = module(x).flatten(2)
    out_perm = module(x.flatten(2)[:, :, perm].reshape(2, 16, 4, 5)).flatten(2)
    torch.testing.assert_close(out_perm, out[:, :, perm], atol=1e-5, rtol=1e-5)


def test_residual_adds_the_input_and_fused_operands_keep_positions_contiguous(monkeypatch, fused_kernel):
    module = _perturbed(16, heads=4)
    bare = copy.deepcopy(module)
    bare.residual = False
    x = torch.randn(2, 16, 7, 3)
    torch.testing.assert_close(module(x), x + bare(x))
    seen = []
    original = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        seen.append([t.stride(-1) for t in (q, k, v)])
        return original(q, k, v, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    with torch.no_grad():  # with gradients, attention this small runs the core's matmul kernel
        module(x.to(memory_format=torch.channels_last))
    assert seen == [[1, 1, 1]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"heads": 5}, r"heads must divide channels \(16\), got 5"),
        ({"heads": 0}, "heads must be an integer >= 1, got 0"),
        ({"attn_drop": -0.1}, r"attn_drop must be a number in \[0.0, 1.0\)"),
        ({"proj_drop": 1.0}, r"proj_drop must be a number in \[0.0, 1.0\)"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CrossCovarianceAttention(16, **kwargs)
