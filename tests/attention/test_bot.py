"""BoTNet relative-position self-attention ("bot") against timm's BottleneckAttn and a float64
loop reference.

timm fixes feat_size at construction and, by default, adds the position logits unscaled; the
paper (and BoTNet's reference code) scales them with the content logits. We follow the paper
by default; ``scale_pos=False`` reproduces timm's default and ``scale_pos=True`` timm's
``scale_pos_embed=True``; both are tested, as is the size of the difference between them.
"""

from __future__ import annotations

import math

import pytest
import torch
from attnkit import FLASH
from timm.layers.bottleneck_attn import BottleneckAttn

from visattn import record_attention
from visattn.attention.bot import BottleneckSelfAttention
from visattn.functional import RULES


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def from_timm(timm_attn: BottleneckAttn, hw, max_distance=9, **options) -> BottleneckSelfAttention:
    """Ours with timm's weights: the qkv 1x1 conv becomes the linear projection (same q|k|v,
    head-major order) and timm's (2H-1, d) / (2W-1, d) tables the centre of ours."""
    channels = timm_attn.qkv.weight.shape[1]
    ours = BottleneckSelfAttention(
        channels, heads=timm_attn.num_heads, max_distance=max_distance, residual=False, **options
    )
    h, w = hw
    m = max_distance
    with torch.no_grad():
        ours.qkv.weight.copy_(timm_attn.qkv.weight[:, :, 0, 0])
        ours.rel_h.normal_()  # entries beyond timm's range must not matter at this size
        ours.rel_w.normal_()
        ours.rel_h[m - (h - 1) : m + h] = timm_attn.pos_embed.height_rel
        ours.rel_w[m - (w - 1) : m + w] = timm_attn.pos_embed.width_rel
    return ours.eval()


@pytest.mark.parametrize("hw", [(7, 5), (8, 8), (3, 10)])
@pytest.mark.parametrize("scale_pos", [False, True])
def test_matches_timm_bottleneck_attn(hw, scale_pos):
    theirs = BottleneckAttn(32, feat_size=hw, num_heads=4, scale_pos_embed=scale_pos).eval()
    ours = from_timm(theirs, hw, scale_pos=scale_pos)
    x = torch.randn(3, 32, *hw)
    with torch.no_grad():
        expected = theirs(x)
        close(ours(x), expected)  # fused path
        with record_attention(ours) as maps:
            close(ours(x), expected)  # explicit path
    assert maps["BottleneckSelfAttention"].shape == (3, 4, hw[0] * hw[1], hw[0] * hw[1])


def test_default_follows_the_paper_not_timms_default():
    """Default = timm's scale_pos_embed=True plus the input; timm's default (unscaled position
    logits) is a different function, by more than rounding."""
    hw = (6, 5)
    theirs = BottleneckAttn(16, feat_size=hw, num_heads=4).eval()
    theirs_scaled = BottleneckAttn(16, feat_size=hw, num_heads=4, scale_pos_embed=True).eval()
    theirs_scaled.load_state_dict(theirs.state_dict())
    ours = from_timm(theirs, hw)
    default = BottleneckSelfAttention(16, max_distance=9).eval()
    default.load_state_dict(ours.state_dict())
    assert default.scale_pos and default.residual and not ours.residual
    x = torch.randn(2, 16, *hw)
    with torch.no_grad():
        close(default(x), theirs_scaled(x) + x)
        assert (default(x) - x - theirs(x)).abs().max() > 1e-2


def reference(module: BottleneckSelfAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 loop over query/key pairs with clipped offsets, written from the equations."""
    x = x.double()
    B, C, H, W = x.shape
    heads, d, m = module.heads, module.head_dim, module.max_distance
    weight = module.qkv.weight.double()
    rel_h, rel_w = module.rel_h.double(), module.rel_w.double()
    tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
    q, k, v = (tokens @ weight[i * C : (i + 1) * C].T for i in range(3))  # (B, N, C) each
    q, k, v = (t.view(B, H * W, heads, d).transpose(1, 2) for t in (q, k, v))  # (B, heads, N, d)
    logits = torch.empty(B, heads, H * W, H * W, dtype=torch.float64)
    for i in range(H * W):
        for j in range(H * W):
            dy = max(-m, min(m, j // W - i // W))
            dx = max(-m, min(m, j % W - i % W))
            pos = q[:, :, i] @ (rel_h[dy + m] + rel_w[dx + m])
            logits[:, :, i, j] = (q[:, :, i] * k[:, :, j]).sum(-1) + pos
    weights = (logits / math.sqrt(d)).softmax(-1)
    out = (weights @ v).transpose(1, 2).reshape(B, H * W, C).transpose(1, 2).reshape(B, C, H, W)
    return x + out, weights


@pytest.mark.parametrize("hw", [(5, 7), (9, 4)])
def test_clipped_offsets_match_a_float64_loop(hw):
    """max_distance=2 at 9x4 / 5x7: most offsets are clipped; both paths and the map agree."""
    module = BottleneckSelfAttention(16, heads=2, max_distance=2).eval()
    x = torch.randn(2, 16, *hw)
    expected, weights = reference(module, x)
    with torch.no_grad():
        close(module(x).double(), expected)
        with record_attention(module) as maps:
            close(module(x).double(), expected)
    close(maps["BottleneckSelfAttention"].double(), weights)
    assert maps.grid("BottleneckSelfAttention") == hw


def test_clipping_only_matters_beyond_max_distance():
    """At 4x3 every offset is within 3, so a larger table with the same centre is the same."""
    small = BottleneckSelfAttention(16, max_distance=3).eval()
    large = BottleneckSelfAttention(16, max_distance=7).eval()
    with torch.no_grad():
        large.qkv.weight.copy_(small.qkv.weight)
        large.rel_h[4:11] = small.rel_h
        large.rel_w[4:11] = small.rel_w
    x = torch.randn(2, 16, 4, 3)
    with torch.no_grad():
        close(large(x), small(x))
        # ... but at 6x3 the offsets +-4, +-5 read different rows.
        x = torch.randn(2, 16, 6, 3)
        assert (large(x) - small(x)).abs().max() > 1e-4


def test_large_maps_run_the_flash_kernel_small_ones_matmuls(sdpa_calls):
    """The core's rule: in inference, relative logits over more than ``RULES.rel_scores``
    scores are folded into the flash kernel's operands; smaller maps run batched matmuls."""
    module = BottleneckSelfAttention(16).eval()
    side = math.ceil(RULES.rel_scores**0.25) + 1  # (side * side)**2 scores > rel_scores
    with torch.no_grad():
        module(torch.randn(1, 16, side, side))
        assert [backend for _, backend in sdpa_calls] == [FLASH]
        module(torch.randn(1, 16, 4, 5))
    assert len(sdpa_calls) == 1


def test_proj_option_adds_an_output_projection():
    module = BottleneckSelfAttention(16, proj=True, residual=False).eval()
    plain = BottleneckSelfAttention(16, residual=False).eval()
    plain.load_state_dict({k: v for k, v in module.state_dict().items() if not k.startswith("proj.")})
    x = torch.randn(2, 16, 5, 4)
    with torch.no_grad():
        expected = module.proj(plain(x).flatten(2).transpose(1, 2)).transpose(1, 2).reshape(x.shape)
        close(module(x), expected)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"heads": 0}, "heads must be an integer >= 1, got 0"),
        ({"heads": 3}, r"heads must divide channels \(16\), got 3"),
        ({"max_distance": -1}, "max_distance must be an integer >= 0, got -1"),
        ({"max_distance": 2.5}, "max_distance must be an integer >= 0, got 2.5"),
    ],
)
def test_option_validation(options, message):
    with pytest.raises(ValueError, match=message):
        BottleneckSelfAttention(16, **options)
