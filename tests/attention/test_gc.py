"""Global Context ("gc") against timm's GlobalContext with the same weights, in the paper's
configuration (fusion by addition, the default here) and in timm's (multiplicative fusion,
r = 8, LayerNorm eps 1e-6), plus the recorded maps' meaning and the zero initialisation.

timm's context logit has a bias; ours has none because it cancels in the softmax: the
parity tests give timm a large random bias and still match."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from timm.layers import GlobalContext as TimmGlobalContext
from torch import nn

from visattn import record_attention
from visattn.attention.gc import GlobalContext

SIZES = [(1, 1), (7, 5), (16, 16), (33, 17)]


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def copy_transform(ours: nn.Sequential, ref: nn.Module) -> None:
    """timm's ConvMlp (1x1 convs, LayerNorm2d) -> our linear bottleneck."""
    ours.fc1.weight.copy_(ref.fc1.weight[:, :, 0, 0])
    ours.fc1.bias.copy_(ref.fc1.bias)
    ours.norm.weight.copy_(ref.norm.weight)
    ours.norm.bias.copy_(ref.norm.bias)
    ours.fc2.weight.copy_(ref.fc2.weight[:, :, 0, 0])
    ours.fc2.bias.copy_(ref.fc2.bias)


def matched(ours: GlobalContext, ref: TimmGlobalContext) -> None:
    with torch.no_grad():
        for p in ref.parameters():  # timm zero-initialises fc2 of the additive branch
            p.normal_(0, 0.5)
        ref.conv_attn.bias.fill_(7.0)  # a constant logit shift: must not matter
        ours.key.weight.copy_(ref.conv_attn.weight[:, :, 0, 0])
        for mine, theirs in [(ours.transform_add, ref.mlp_add), (ours.transform_scale, ref.mlp_scale)]:
            assert (mine is None) == (theirs is None)
            if mine is not None:
                assert mine.fc1.out_features == theirs.fc1.out_channels
                copy_transform(mine, theirs)


def compare(ours: GlobalContext, ref: TimmGlobalContext, channels: int) -> None:
    with torch.no_grad():
        for hw in SIZES:
            x = torch.randn(2, channels, *hw)
            close(ours(x), ref(x))


@pytest.mark.parametrize("channels", [32, 64])
def test_timm_configuration_matches_timm_defaults(channels):
    ref = TimmGlobalContext(channels).eval()  # fuse_scale, rd_ratio 1/8, LayerNorm2d eps 1e-6
    ours = GlobalContext(
        channels, fusion="scale", reduction=8, min_hidden=1, norm_layer=partial(nn.LayerNorm, eps=1e-6)
    ).eval()
    matched(ours, ref)
    compare(ours, ref, channels)


@pytest.mark.parametrize("channels", [16, 64])
def test_paper_default_matches_timm_with_additive_fusion(channels):
    ours = GlobalContext(channels).eval()  # fusion "add", r = 16, hidden >= 8, LayerNorm eps 1e-5
    ref = TimmGlobalContext(channels, fuse_add=True, fuse_scale=False, rd_channels=ours.hidden).eval()
    ref.mlp_add.norm.eps = 1e-5  # the official code's nn.LayerNorm default
    matched(ours, ref)
    compare(ours, ref, channels)


def test_both_fusions_match_timm():
    ours = GlobalContext(32, fusion="both", reduction=4).eval()
    ref = TimmGlobalContext(32, fuse_add=True, fuse_scale=True, rd_channels=8).eval()
    ref.mlp_add.norm.eps = ref.mlp_scale.norm.eps = 1e-5
    matched(ours, ref)
    compare(ours, ref, 32)


def test_default_uses_paper_ratio_with_floor():
    assert GlobalContext(256).hidden == 16
    assert GlobalContext(16).hidden == 8
    assert GlobalContext(16, min_hidden=1).hidden == 1
    assert GlobalContext(32).transform_scale is None and GlobalContext(32).gate is None


def test_maps_are_the_pooling_softmax_and_the_gate():
    module = GlobalContext(8, fusion="both", min_hidden=4).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(2, 8, 5, 3)
    with torch.no_grad(), record_attention(module) as maps:
        out = module(x)
    attn, gate = maps["GlobalContext:context"], maps["GlobalContext:gate"]
    assert maps.kind("GlobalContext:context") == "softmax" and maps.grid("GlobalContext:context") == (5, 3)
    assert maps.kind("GlobalContext:gate") == "channel" and gate.shape == (2, 8)
    # Independent float64 form of the paper: a_j = softmax_j(w . x_j), c = sum_j a_j x_j.
    xd = x.double()
    logits = torch.einsum("c,bchw->bhw", module.key.weight.double()[0], xd).flatten(1)  # (B, N)
    expected = logits.softmax(-1)
    assert attn.shape == (2, 1, 1, 15)
    close(attn[:, 0, 0].double(), expected)
    context = torch.einsum("bn,bcn->bc", expected, xd.flatten(2))  # (B, C)
    add = copy.deepcopy(module.transform_add).double()(context)
    close(out.double(), xd * gate.double()[:, :, None, None] + add[:, :, None, None])


def test_no_n_by_n_tensor_and_no_token_layout_copy():
    """The context is a softmax over N logits and one matrix-vector product: peak memory stays
    at a few (B, N) and (B, C) tensors, far below one N x N score matrix."""
    from visattn.bench import peak_memory

    module = GlobalContext(16).eval()
    x = torch.randn(2, 16, 64, 64)  # N = 4096: one N x N float matrix per sample is 64 MiB
    with torch.no_grad():
        peak = peak_memory(lambda: module(x))
    assert peak < 2 * 16 * 4096 * 4 * 3  # about three (B, C, N) tensors, the output included


def test_zero_initialised_last_layers():
    x = torch.randn(2, 16, 6, 4)
    with torch.no_grad():
        close(GlobalContext(16).eval()(x), x)  # the additive block starts as the identity
        close(GlobalContext(16, fusion="scale").eval()(x), 0.5 * x)  # the gate starts at sigmoid(0)
        assert (GlobalContext(16, zero_init_last=False).eval()(x) - x).abs().max() > 1e-4


def test_context_ignores_where_positions_are():
    """Permuting the positions permutes the output the same way: the context is a weighted
    sum over all positions, identical for each of them."""
    module = GlobalContext(16, fusion="both").eval()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)
        x = torch.randn(2, 16, 4, 6)
        perm = torch.randperm(24)
        out = module(x).flatten(2)
        out_perm = module(x.flatten(2)[:, :, perm].view(2, 16, 4, 6)).flatten(2)
    close(out_perm, out[:, :, perm])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fusion": "mul"}, "fusion must be one of 'add', 'scale', 'both', got 'mul'"),
        ({"reduction": 0}, "reduction must be an integer >= 1, got 0"),
        ({"min_hidden": 0}, "min_hidden must be an integer >= 1, got 0"),
    ],
)
def test_option_validation(options, message):
    with pytest.raises(ValueError, match=message):
        GlobalContext(32, **options)
