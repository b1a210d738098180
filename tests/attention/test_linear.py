"""Linear attention (Katharopoulos et al. 2020) against a float64 explicit N x N evaluation of
the paper's equation, written here independently of the module."""

from __future__ import annotations

import copy

import pytest
import torch

from visattn import record_attention
from visattn.attention.linear import LinearAttention


def float64_reference(module: LinearAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """out_i = sum_j phi(q_i).phi(k_j) v_j / (sum_j phi(q_i).phi(k_j) + eps), phi = elu + 1,
    evaluated with an explicit N x N similarity matrix per head, in float64."""
    m = copy.deepcopy(module).double()
    x = x.double()
    B, C, H, W = x.shape
    heads, d = m.heads, C // m.heads
    tokens = x.reshape(B, C, H * W).permute(0, 2, 1)  # (B, N, C)
    qkv = torch.einsum("bnc,oc->bno", tokens, m.qkv.weight) + m.qkv.bias
    q, k, v = (t.reshape(B, H * W, heads, d) for t in qkv.split(C, dim=-1))  # (B, N, h, d)

    def phi(t: torch.Tensor) -> torch.Tensor:
        return torch.where(t > 0, t + 1, torch.exp(t))  # elu(t) + 1

    sim = torch.einsum("bihd,bjhd->bhij", phi(q), phi(k))  # (B, h, N, N)
    weights = sim / (sim.sum(-1, keepdim=True) + m.eps)
    out = torch.einsum("bhij,bjhd->bihd", weights, v).reshape(B, H * W, C)
    out = torch.einsum("bnc,oc->bno", out, m.proj.weight) + m.proj.bias
    return out.permute(0, 2, 1).reshape(B, C, H, W), weights


def _perturbed(channels: int, **kwargs) -> LinearAttention:
    module = LinearAttention(channels, **kwargs)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return module.eval()


@pytest.mark.parametrize("hw", [(1, 1), (6, 6), (7, 5), (13, 4)])
@pytest.mark.parametrize("heads", [1, 4])
def test_matches_float64_explicit_equation(hw, heads):
    module = _perturbed(16, heads=heads, residual=False)
    x = torch.randn(2, 16, *hw)
    expected, expected_w = float64_reference(module, x)
    fused = module(x)
    torch.testing.assert_close(fused.double(), expected, atol=1e-5, rtol=1e-5)
    with record_attention(module) as maps:
        explicit = module(x)
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-5)
    (key,) = maps
    assert maps.kind(key) == "softmax" and maps.grid(key) == hw
    torch.testing.assert_close(maps[key].double(), expected_w, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(maps[key].sum(-1), torch.ones(2, heads, hw[0] * hw[1]))


def test_eps_is_in_the_denominator():
    """A large eps makes its place visible: out_i = num_i / (den_i + eps), and the implied
    rows sum to den_i / (den_i + eps) < 1."""
    module = _perturbed(8, heads=2, eps=0.5, residual=False)
    x = torch.randn(2, 8, 3, 4) * 0.1
    expected, expected_w = float64_reference(module, x)
    torch.testing.assert_close(module(x).double(), expected, atol=1e-5, rtol=1e-5)
    with record_attention(module) as maps:
        module(x)
    (weights,) = maps.values()
    torch.testing.assert_close(weights.double(), expected_w, atol=1e-6, rtol=1e-5)
    assert (weights.sum(-1) < 0.999).all()


def test_positions_are_permutation_equivariant():
    """No position information: permuting the positions permutes the output."""
    module = _perturbed(8, heads=2)
    x = torch.randn(2, 8, 4, 5)
    perm = torch.randperm(20)
    out = module(x).flatten(2)
    out_perm = module(x.flatten(2)[:, :, perm].reshape(2, 8, 4, 5)).flatten(2)
    torch.testing.assert_close(out_perm, out[:, :, perm], atol=1e-5, rtol=1e-5)


def test_residual_adds_the_input():
    module = _perturbed(16)
    bare = copy.deepcopy(module)
    bare.residual = False
    x = torch.randn(2, 16, 5, 3)
    torch.testing.assert_close(module(x), x + bare(x))


def test_bfloat16_inputs_are_summed_in_float32():
    """Summing 1024 positions in bfloat16 is off by about 0.08 here; in float32, about 0.01."""
    module = _perturbed(16, residual=False)
    x = torch.randn(1, 16, 32, 32) * 4
    expected = module(x)
    out = copy.deepcopy(module).to(torch.bfloat16)(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), expected, atol=0.03, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"heads": 3}, r"heads must divide channels \(16\), got 3"),
        ({"heads": 0}, "heads must be an integer >= 1, got 0"),
        ({"eps": -1e-6}, r"eps must be a number in \[0.0, 1.0\), got -1e-06"),
        ({"proj_drop": 2.0}, r"proj_drop must be a number in \[0.0, 1.0\)"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LinearAttention(16, **kwargs)
