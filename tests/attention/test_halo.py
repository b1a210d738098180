"""Halo attention against timm's ``HaloAttn`` and a masked full attention in float64.

timm attends to its zero-padded halo and, by default, adds the position logits unscaled:
``mask_padding=False`` with ``scale_pos_logits=False`` (or ``True``) equals timm with
``scale_pos_embed=False`` (or ``True``). Our default masks every key outside the map and
scales the position logits with the content logits (BoTNet); it equals the masked full
attention and differs from timm wherever the halo leaves the map.
"""

from __future__ import annotations

import math

import pytest
import torch
from attnkit import assert_window_map_is
from timm.layers.halo_attn import HaloAttn

from visattn import record_attention
from visattn.attention.halo import HaloAttention

C, HEADS = 16, 2


def make(**options) -> HaloAttention:
    return HaloAttention(C, heads=HEADS, residual=False, **options).eval()


def timm_like(module: HaloAttention, *, scale_pos_embed: bool) -> HaloAttn:
    """timm's HaloAttn holding our weights (its names and layouts mapped explicitly)."""
    b, h, d = module.block_size, module.halo_size, module.head_dim
    ref = HaloAttn(
        C,
        num_heads=HEADS,
        dim_head=d,
        block_size=b,
        halo_size=h,
        qkv_bias=module.q.bias is not None,
        scale_pos_embed=scale_pos_embed,
    ).eval()
    dv = C // HEADS
    with torch.no_grad():
        ref.q.weight.copy_(module.q.weight[:, :, None, None])
        # timm's kv convolution interleaves per head: [k_0 | v_0 | k_1 | v_1 ...]; ours is [k | v].
        k_w, v_w = module.kv.weight.split([HEADS * d, C])
        kv_w = torch.cat([k_w.view(HEADS, d, C), v_w.view(HEADS, dv, C)], dim=1).reshape(-1, C)
        ref.kv.weight.copy_(kv_w[:, :, None, None])
        if module.q.bias is not None:
            ref.q.bias.copy_(module.q.bias)
            k_b, v_b = module.kv.bias.split([HEADS * d, C])
            ref.kv.bias.copy_(torch.cat([k_b.view(HEADS, d), v_b.view(HEADS, dv)], dim=1).reshape(-1))
        # timm's tables have 2 (b + 2h) - 1 rows and never read the first 2h.
        ref.pos_embed.height_rel[2 * h :].copy_(module.rel_height)
        ref.pos_embed.width_rel[2 * h :].copy_(module.rel_width)
        ref.pos_embed.height_rel[: 2 * h].fill_(1e3)  # would show at once if ever read
        ref.pos_embed.width_rel[: 2 * h].fill_(1e3)
    return ref


def masked_full_attention(module: HaloAttention, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Float64 attention over all N positions: each query sees the real positions of its
    block grown by the halo; logits q.k / sqrt(d) + q.(r_h[dy] + r_w[dx]) / sqrt(d)."""
    x = x.double()
    B, _, H, W = x.shape
    b, h, d = module.block_size, module.halo_size, module.head_dim
    rows = torch.arange(H).repeat_interleave(W)  # (N,)
    cols = torch.arange(W).repeat(H)
    top, left = (rows // b) * b - h, (cols // b) * b - h  # each query's window corner
    inside = (rows[None, :] >= top[:, None]) & (rows[None, :] < top[:, None] + b + 2 * h)
    inside &= (cols[None, :] >= left[:, None]) & (cols[None, :] < left[:, None] + b + 2 * h)  # (N, N)
    dy = (rows[None, :] - rows[:, None]).clamp(1 - b - h, b + h - 1) + b + h - 1  # key minus query
    dx = (cols[None, :] - cols[:, None]).clamp(1 - b - h, b + h - 1) + b + h - 1
    tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
    q = (tokens @ module.q.weight.double().T).view(B, H * W, HEADS, d).transpose(1, 2)  # (B, heads, N, d)
    kv = tokens @ module.kv.weight.double().T
    k = kv[..., : HEADS * d].view(B, H * W, HEADS, d).transpose(1, 2)
    v = kv[..., HEADS * d :].view(B, H * W, HEADS, C // HEADS).transpose(1, 2)
    rel_h, rel_w = module.rel_height.double(), module.rel_width.double()
    pos = torch.einsum("bhnd,nmd->bhnm", q, rel_h[dy]) + torch.einsum("bhnd,nmd->bhnm", q, rel_w[dx])
    scores = (q @ k.transpose(-1, -2) + pos) / math.sqrt(d)
    weights = scores.masked_fill(~inside, float("-inf")).softmax(-1)  # (B, heads, N, N)
    out = (weights @ v).transpose(1, 2).reshape(B, H * W, C)
    return out.transpose(1, 2).reshape(B, C, H, W), weights


@pytest.mark.parametrize("scale", [False, True])
@pytest.mark.parametrize(
    ("block", "halo", "hw"),
    [(4, 1, (8, 8)), (4, 2, (8, 12)), (2, 1, (6, 2)), (8, 3, (16, 24))],
    ids=lambda v: str(v),
)
def test_matches_timm_with_zero_padded_halo(scale, block, halo, hw):
    module = make(block_size=block, halo_size=halo, scale_pos_logits=scale, mask_padding=False)
    ref = timm_like(module, scale_pos_embed=scale)
    x = torch.randn(2, C, *hw)
    with torch.no_grad():
        torch.testing.assert_close(module(x), ref(x), atol=1e-5, rtol=1e-5)


def test_matches_timm_with_qkv_bias():
    """timm pads k and v with zeros after the projection, so the bias does not reach them."""
    module = make(block_size=4, halo_size=2, qkv_bias=True, scale_pos_logits=False, mask_padding=False)
    with torch.no_grad():
        module.kv.bias.normal_()
    x = torch.randn(2, C, 8, 4)
    with torch.no_grad():
        torch.testing.assert_close(
            module(x), timm_like(module, scale_pos_embed=False)(x), atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize(
    ("block", "halo", "hw"),
    [(4, 1, (8, 8)), (4, 2, (9, 6)), (3, 1, (7, 5)), (8, 3, (5, 11)), (2, 0, (3, 5)), (4, 1, (1, 1))],
    ids=lambda v: str(v),
)
def test_default_equals_masked_full_attention(block, halo, hw):
    module = make(block_size=block, halo_size=halo)
    x = torch.randn(2, C, *hw)
    with torch.no_grad():
        fused = module(x)
        with record_attention(module) as maps:
            explicit = module(x)
    expected, expected_w = masked_full_attention(module, x)
    torch.testing.assert_close(fused.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-5)
    assert_window_map_is(maps, hw, (block + 2 * halo) ** 2, expected_w)


def test_default_differs_from_timm_only_through_the_padding():
    x = torch.randn(2, C, 12, 12)
    with torch.no_grad():
        # No halo and a multiple of the block: nothing is padded, the scaled variant equals timm.
        module = make(block_size=4, halo_size=0)
        torch.testing.assert_close(
            module(x), timm_like(module, scale_pos_embed=True)(x), atol=1e-5, rtol=1e-5
        )
        # With a halo, only the blocks whose window crosses the border differ: the centre block
        # (rows and columns 4..7, window 3..8) sees no padding.
        module = make(block_size=4, halo_size=1)
        gap = (module(x) - timm_like(module, scale_pos_embed=True)(x)).abs().amax(dim=(0, 1))  # (H, W)
        border = torch.ones(12, 12, dtype=torch.bool)
        border[4:8, 4:8] = False
        assert gap[~border].max() < 1e-5 and gap[border].min() > 1e-4, gap


def test_residual_adds_the_input():
    module = make(block_size=4, halo_size=1)
    with_residual = HaloAttention(C, heads=HEADS, block_size=4, halo_size=1).eval()
    with_residual.load_state_dict(module.state_dict())
    x = torch.randn(2, C, 6, 9)
    with torch.no_grad():
        torch.testing.assert_close(with_residual(x), x + module(x))


def test_defaults_follow_the_paper():
    module = HaloAttention(64)
    assert (module.block_size, module.halo_size, module.heads) == (8, 3, 8)
    assert module.rel_height.shape == (2 * (8 + 3) - 1, 8) and module.scale_pos_logits and module.mask_padding


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"block_size": 0}, "block_size must be an integer >= 1, got 0"),
        ({"halo_size": -1}, "halo_size must be an integer >= 0, got -1"),
        ({"heads": 3}, r"heads must divide channels \(32\), got 3"),
        ({"head_dim": 0}, "head_dim must be an integer >= 1, got 0"),
        ({"attn_drop": 1.0}, r"attn_drop must be a number in \[0.0, 1.0\), got 1.0"),
    ],
)
def test_option_validation(options, message):
    with pytest.raises(ValueError, match=message):
        HaloAttention(32, **options)


@pytest.mark.parametrize("hw", [(16, 16), (13, 7), (3, 5)])
def test_training_path_equals_the_float64_reference_with_gradients(hw):
    """With learnable position tables the module computes its own matmuls (padding masked in
    the per-axis logits); outputs and every gradient match the masked full attention."""
    module = make(block_size=4, halo_size=1).train()
    x = torch.randn(2, C, *hw, requires_grad=True)
    out = module(x)
    expected, _ = masked_full_attention(module, x)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(out)
    params = [x, *module.parameters()]
    ours = torch.autograd.grad(out, params, grad)
    theirs = torch.autograd.grad(expected, params, grad.double())
    for name, a, b in zip(["x", *(n for n, _ in module.named_parameters())], ours, theirs, strict=True):
        torch.testing.assert_close(a, b.to(a.dtype), atol=1e-4, rtol=1e-4, msg=name)
