"""EfficientViT's ReLU linear attention against timm's efficientvit_mit.LiteMLA with the same
weights, and its recorded maps against the implied attention matrices computed from timm's
own q, k, v."""

from __future__ import annotations

import copy

import pytest
import torch
from timm.models.efficientvit_mit import LiteMLA

from visattn import record_attention
from visattn.attention.relu_linear import ReLULinearAttention


def _perturbed(channels: int, **kwargs) -> ReLULinearAttention:
    module = ReLULinearAttention(channels, **kwargs)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        module.norm.running_mean.normal_(0, 0.1)
        module.norm.running_var.uniform_(0.5, 1.5)
    return module.eval()


def timm_like(module: ReLULinearAttention) -> LiteMLA:
    """timm's LiteMLA with the same weights, names mapped one by one."""
    ref = LiteMLA(
        module.channels,
        module.channels,
        heads=module.heads,
        dim=module.head_dim,
        scales=module.scales,
        eps=module.eps,
    )
    mapping = {"qkv.conv.weight": "qkv.weight", "proj.conv.weight": "proj.weight"}
    for i in range(len(module.scales)):
        for j in (0, 1):
            mapping[f"aggreg.{i}.{j}.weight"] = f"aggreg.{i}.{j}.weight"
    for leaf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        mapping[f"proj.norm.{leaf}"] = f"norm.{leaf}"
    ours = module.state_dict()
    theirs = ref.state_dict()
    assert set(theirs) == set(mapping), sorted(set(theirs) ^ set(mapping))
    ref.load_state_dict({name: ours[mapping[name]] for name in theirs})
    return ref.eval()


@pytest.mark.parametrize("hw", [(1, 1), (8, 8), (7, 5), (3, 11)])
@pytest.mark.parametrize(
    ("channels", "kwargs"),
    [(32, {}), (16, {}), (32, {"head_dim": 8, "scales": (3, 5)}), (24, {"head_dim": 8, "scales": ()})],
)
def test_matches_timm_litemla(hw, channels, kwargs):
    module = _perturbed(channels, residual=False, **kwargs)
    ref = timm_like(module)
    x = torch.randn(2, channels, *hw)
    with torch.no_grad():
        expected = ref(x)
        fused = module(x)
        with record_attention(module) as maps:
            explicit = module(x)
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(explicit, expected, atol=1e-5, rtol=1e-5)
    assert list(maps) == [f"ReLULinearAttention:scale{s}" for s in range(1 + len(module.scales))]


def test_timm_eps_and_the_authors_eps_are_both_reachable():
    """timm's default eps is 1e-5, the authors' 1e-15; both are the same function of eps."""
    for eps in (1e-5, 1e-15, 0.3):
        module = _perturbed(16, head_dim=4, eps=eps, residual=False)
        x = torch.randn(2, 16, 4, 5)
        with torch.no_grad():
            torch.testing.assert_close(module(x), timm_like(module)(x), atol=1e-5, rtol=1e-5)


def test_maps_are_the_implied_attention_of_each_scale():
    module = _perturbed(16, head_dim=4, scales=(3,), residual=False)
    ref = timm_like(module).double()
    x = torch.randn(2, 16, 5, 6)
    with torch.no_grad(), record_attention(module) as maps:
        module(x)
        # q, k, v as timm's LiteMLA makes them, then the implied matrix per scale, in float64.
        qkv = ref.qkv(x.double())
        for scale, tokens in enumerate([qkv, ref.aggreg[0](qkv)]):
            grouped = tokens.reshape(2, module.heads, 3 * 4, 30).transpose(-1, -2)  # (B, h, N, 3d)
            q, k, _ = grouped.chunk(3, dim=-1)
            q, k = q.relu(), k.relu()
            sim = q @ k.transpose(-1, -2)  # (B, h, N, N)
            weights = sim / (sim.sum(-1, keepdim=True) + module.eps)
            key = f"ReLULinearAttention:scale{scale}"
            assert maps.kind(key) == "softmax" and maps.grid(key) == (5, 6)
            torch.testing.assert_close(maps[key].double(), weights, atol=1e-6, rtol=1e-5)


def test_residual_adds_the_input_and_gradients_are_exact_at_batch_one():
    module = _perturbed(16, head_dim=8)
    bare = copy.deepcopy(module)
    bare.residual = False
    x = torch.randn(1, 16, 5, 4)
    torch.testing.assert_close(module(x), x + bare(x))
    double = copy.deepcopy(module).double()
    xd = torch.randn(1, 16, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(double, (xd,), eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True)


def test_default_heads_are_floored_at_one():
    assert ReLULinearAttention(16).heads == 1 and ReLULinearAttention(64).heads == 2
    assert ReLULinearAttention(16, heads=3, head_dim=8).qkv.out_channels == 3 * 3 * 8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"head_dim": 0}, "head_dim must be an integer >= 1, got 0"),
        ({"heads": 0}, "heads must be an integer >= 1, got 0"),
        ({"scales": (4,)}, r"scales must be odd integers >= 1, got \(4,\)"),
        ({"scales": (5, 0)}, r"scales must be odd integers >= 1, got \(5, 0\)"),
        ({"eps": -1.0}, r"eps must be a number in \[0.0, 1.0\), got -1.0"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReLULinearAttention(16, **kwargs)
