"""MobileViT v2 separable self-attention against timm's mobilevit.LinearSelfAttention (every
position a token: the (B, C, 1, H*W) patch layout), with the same weights."""

from __future__ import annotations

import copy

import pytest
import torch
from timm.models.mobilevit import LinearSelfAttention

from visattn import record_attention
from visattn.attention.separable import SeparableSelfAttention


def _perturbed(channels: int, **kwargs) -> SeparableSelfAttention:
    module = SeparableSelfAttention(channels, **kwargs)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return module.eval()


def timm_like(module: SeparableSelfAttention) -> LinearSelfAttention:
    ref = LinearSelfAttention(module.channels, bias=module.qkv.bias is not None)
    mapping = {"qkv_proj": "qkv", "out_proj": "proj"}
    ours = dict(module.named_parameters())
    with torch.no_grad():
        for name, p in ref.named_parameters():
            prefix, leaf = name.split(".")
            p.copy_(ours[f"{mapping[prefix]}.{leaf}"])
    return ref.eval()


@pytest.mark.parametrize("hw", [(1, 1), (8, 8), (7, 5), (2, 13)])
@pytest.mark.parametrize(("channels", "bias"), [(16, True), (32, False)])
def test_matches_timm_with_one_pixel_per_patch(hw, channels, bias):
    module = _perturbed(channels, bias=bias, residual=False)
    ref = timm_like(module)
    x = torch.randn(2, channels, *hw)
    with torch.no_grad():
        expected = ref(x.reshape(2, channels, 1, hw[0] * hw[1])).reshape(2, channels, *hw)
        out = module(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_map_is_the_context_score_of_every_position():
    module = _perturbed(16, residual=False)
    ref = timm_like(module)
    x = torch.randn(3, 16, 5, 4)
    with torch.no_grad(), record_attention(module) as maps:
        out = module(x)
    (key,) = maps
    assert maps.kind(key) == "softmax" and maps.grid(key) == (5, 4)
    scores = maps[key]  # (B, 1, 1, N)
    assert scores.shape == (3, 1, 1, 20)
    with torch.no_grad():
        projected = ref.qkv_proj(x.reshape(3, 16, 1, 20))  # (B, 1 + 2C, 1, N)
        logits, keys, values = projected.split([1, 16, 16], dim=1)
        # The scores are the softmax over positions of timm's score channel ...
        torch.testing.assert_close(scores, logits.softmax(-1), atol=1e-6, rtol=1e-5)
        # ... and they are what weighs the keys into the context vector.
        context = (keys * scores).sum(-1, keepdim=True)  # (B, C, 1, 1)
        expected = ref.out_proj(values.relu() * context).reshape(3, 16, 5, 4)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_one_position_reaches_every_output_through_the_context():
    """The context vector is shared by the whole map: perturbing one position changes the
    output everywhere (a per-pixel or windowed implementation would not)."""
    module = _perturbed(8, residual=False)
    x = torch.randn(1, 8, 4, 4)
    y = x.clone()
    y[:, :, 0, 0] += 1.0
    with torch.no_grad():
        delta = (module(y) - module(x)).abs().amax(1)  # (1, 4, 4)
    assert (delta > 0).all()  # global: every position sees the change


def test_residual_adds_the_input():
    module = _perturbed(16)
    bare = copy.deepcopy(module)
    bare.residual = False
    x = torch.randn(2, 16, 3, 7)
    torch.testing.assert_close(module(x), x + bare(x))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attn_drop": 1.0}, r"attn_drop must be a number in \[0.0, 1.0\), got 1.0"),
        ({"proj_drop": -1}, r"proj_drop must be a number in \[0.0, 1.0\), got -1"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SeparableSelfAttention(16, **kwargs)
