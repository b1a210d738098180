"""SelfAttention and MultiHeadSelfAttention2d against torch.nn.MultiheadAttention and float64
references; AttentionCNN at odd sizes and channel counts."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from visattn import AttentionCNN, MultiHeadSelfAttention2d, SelfAttention, create_model, record_attention
from visattn.attention.mhsa import MultiHeadAttention
from visattn.functional import sincos_2d

SIZES = [(1, 1), (8, 8), (32, 32), (57, 43)]


def torch_mha_like(module: MultiHeadSelfAttention2d) -> nn.MultiheadAttention:
    """torch's MultiheadAttention holding the same weights."""
    mha = nn.MultiheadAttention(module.channels, module.heads, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(module.qkv.weight)
        mha.in_proj_bias.copy_(module.qkv.bias)
        mha.out_proj.weight.copy_(module.proj.weight)
        mha.out_proj.bias.copy_(module.proj.bias)
    return mha.eval()


@pytest.mark.parametrize("hw", [(1, 1), (5, 7), (12, 9)])
def test_mhsa2d_matches_torch_multihead_attention(hw):
    module = MultiHeadSelfAttention2d(32, heads=4, pos="none", residual=False).eval()
    mha = torch_mha_like(module)
    x = torch.randn(3, 32, *hw)
    tokens = x.flatten(2).transpose(1, 2)
    expected, expected_w = mha(tokens, tokens, tokens, average_attn_weights=False)
    out = module(x)
    torch.testing.assert_close(out.flatten(2).transpose(1, 2), expected, atol=1e-5, rtol=1e-5)
    with record_attention(module) as maps:
        module(x)
    torch.testing.assert_close(maps["MultiHeadSelfAttention2d"], expected_w, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(("grid", "n"), [((4, 3), 12), ((4, 3), 13), (None, 7)])
def test_token_attention_matches_torch_multihead_attention(grid, n):
    """The one token class, as the ViT and MultiHeadSelfAttention2d use it: a grid of
    positions (the map carries it) or a class token and a grid (the full map carries the grid
    and one prefix token, and the class token's row is kept as well)."""
    module = MultiHeadAttention(32, heads=4).eval()
    mha = torch_mha_like(module)
    x = torch.randn(3, n, 32)
    expected, expected_w = mha(x, x, x, average_attn_weights=False)
    torch.testing.assert_close(module(x, grid=grid), expected, atol=1e-5, rtol=1e-5)
    with record_attention(module) as maps:
        module(x, grid=grid)
    torch.testing.assert_close(maps["MultiHeadAttention"], expected_w, atol=1e-6, rtol=1e-5)
    assert maps.grid("MultiHeadAttention") == grid  # with the class token in front: one prefix token
    assert maps.prefix_tokens("MultiHeadAttention") == (1 if n == 13 else 0)
    if n == 13:
        cls = expected_w[:, :, :1, 1:]
        torch.testing.assert_close(maps["MultiHeadAttention:cls"], cls / cls.sum(-1, keepdim=True))
        assert maps.grid("MultiHeadAttention:cls") == grid
    with pytest.raises(ValueError, match=r"grid \(5, 5\) needs 25 or 1 \+ 25 tokens, got"):
        module(x, grid=(5, 5))


def test_mhsa2d_sine_position_enters_queries_and_keys_only():
    module = MultiHeadSelfAttention2d(16, heads=2, pos="sine").eval()
    mha = torch_mha_like(module)
    x = torch.randn(2, 16, 6, 5)
    tokens = x.flatten(2).transpose(1, 2)
    enc = sincos_2d(6, 5, 16)
    expected = tokens + mha(tokens + enc, tokens + enc, tokens, need_weights=False)[0]  # residual
    torch.testing.assert_close(module(x).flatten(2).transpose(1, 2), expected, atol=1e-5, rtol=1e-5)


def test_mhsa2d_attends_across_positions():
    """Without position encoding, permuting the positions permutes the output the same way;
    attention across channels (the tutorial's bug) would break this."""
    module = MultiHeadSelfAttention2d(8, heads=2, pos="none").eval()
    x = torch.randn(2, 8, 4, 6)
    perm = torch.randperm(24)
    out = module(x).flatten(2)
    out_perm = module(x.flatten(2)[:, :, perm].view(2, 8, 4, 6)).flatten(2)
    torch.testing.assert_close(out_perm, out[:, :, perm], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pos", ["sine", "conv", "none"])
@pytest.mark.parametrize("hw", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_mhsa2d_fused_equals_explicit_and_float64(pos, hw):
    module = MultiHeadSelfAttention2d(16, heads=4, pos=pos).eval()
    x = torch.randn(2, 16, *hw)
    fused = module(x)
    with record_attention(module) as maps:
        explicit = module(x)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    ref = copy.deepcopy(module).double()(x.double())
    torch.testing.assert_close(fused.double(), ref, atol=1e-5, rtol=1e-4)
    (w,) = maps.values()
    n = hw[0] * hw[1]
    assert w.shape == (2, 4, n, n) and maps.grid("MultiHeadSelfAttention2d") == hw
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, n))


@pytest.mark.parametrize("n", [1, 64, 1024, 57 * 43])
def test_self_attention_matches_float64_reference(n):
    layer = SelfAttention(24).eval()
    x = torch.randn(2, n, 24)
    weight, bias = layer.qkv.weight.double(), layer.qkv.bias.double()
    q, k, v = (x.double() @ weight[i * 24 : (i + 1) * 24].T + bias[i * 24 : (i + 1) * 24] for i in range(3))
    w = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(24), dim=-1)
    torch.testing.assert_close(layer(x).double(), w @ v, atol=1e-5, rtol=1e-4)
    if n <= 1024:
        with record_attention(layer) as maps:
            layer(x)
        torch.testing.assert_close(maps["SelfAttention"][:, 0].double(), w, atol=1e-6, rtol=1e-4)


def test_self_attention_mask_and_gradients():
    layer = SelfAttention(8)
    x = torch.randn(2, 5, 8, requires_grad=True)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    out = layer(x, mask=causal)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
    # With a causal mask the first token sees only itself: its output is its own value.
    value = torch.nn.functional.linear(x[:, 0], layer.qkv.weight[16:], layer.qkv.bias[16:])
    torch.testing.assert_close(out[:, 0], value, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("hw", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_attention_cnn_any_size_and_channels(in_channels, hw):
    model = AttentionCNN(10, in_channels=in_channels, widths=(8, 16), strides=(2, 2)).eval()
    x = torch.randn(2, in_channels, *hw)
    logits = model(x)
    assert logits.shape == (2, 10) and logits.dtype == torch.float32
    feats = model.forward_features(x)
    grid = (math.ceil(hw[0] / 4), math.ceil(hw[1] / 4))
    assert feats.shape == (2, 16, *grid)
    torch.testing.assert_close(model.forward_head(feats), logits)
    ref = copy.deepcopy(model).double()(x.double())
    torch.testing.assert_close(logits.double(), ref, atol=1e-5, rtol=1e-4)
    with record_attention(model) as maps:
        torch.testing.assert_close(model(x), logits, atol=1e-5, rtol=1e-5)
    assert list(maps) == ["attn"] and maps["attn"].shape == (2, 4, grid[0] * grid[1], grid[0] * grid[1])


def test_attention_cnn_without_attention_is_the_same_network_minus_attention():
    with_attn = create_model("attention_cnn", num_classes=10, in_channels=1)
    without = create_model("attention_cnn", num_classes=10, in_channels=1, attention=None)
    attn_params = sum(p.numel() for p in with_attn.attn.parameters())
    assert attn_params > 0
    n_with = sum(p.numel() for p in with_attn.parameters())
    assert n_with - attn_params == sum(p.numel() for p in without.parameters())
    shared = {k: v for k, v in with_attn.state_dict().items() if not k.startswith("attn.")}
    assert set(shared) == set(without.state_dict())
    without.load_state_dict(shared)
    with_attn.eval(), without.eval()
    x = torch.randn(2, 1, 20, 20)
    torch.testing.assert_close(
        without(x), with_attn.forward_head(with_attn.stem(x)), msg="the head sees the raw stem"
    )
    with record_attention(without) as maps:
        without(x)
    assert len(maps) == 0


def test_attention_cnn_trains_one_step():
    model = AttentionCNN(4, in_channels=3, widths=(8, 8), strides=(2, 1))
    x, y = torch.randn(4, 3, 12, 10), torch.tensor([0, 1, 2, 3])
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_callable_attention_and_options():
    model = AttentionCNN(3, in_channels=1, attention=lambda c: MultiHeadSelfAttention2d(c, heads=2))
    assert model.attn.heads == 2
    model = AttentionCNN(3, in_channels=1, attention="mhsa", attention_options={"heads": 8})
    assert model.attn.heads == 8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"heads": 0}, "heads must be an integer >= 1"),
        ({"heads": 5}, r"heads must divide channels \(16\)"),
        ({"pos": "learned"}, "pos must be one of 'sine', 'conv', 'none'"),
        ({"attn_drop": 1.5}, r"attn_drop must be a number in \[0.0, 1.0\)"),
    ],
)
def test_mhsa2d_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiHeadSelfAttention2d(16, **kwargs)


def test_wrong_input_shapes_raise():
    with pytest.raises(
        ValueError,
        match=r"MultiHeadSelfAttention2d expects input of shape \(B, 16, H, W\), got \(2, 8, 4, 4\)",
    ):
        MultiHeadSelfAttention2d(16)(torch.randn(2, 8, 4, 4))
    with pytest.raises(ValueError, match=r"SelfAttention expects input of shape \(B, N, 8\), got \(2, 8\)"):
        SelfAttention(8)(torch.randn(2, 8))
    with pytest.raises(
        ValueError, match=r"AttentionCNN expects input of shape \(B, 1, H, W\), got \(2, 3, 8, 8\)"
    ):
        AttentionCNN(10, in_channels=1)(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="widths and strides"):
        AttentionCNN(10, widths=(8, 8), strides=(2,))
    with pytest.raises(KeyError, match=r"unknown attention .cbam9.; valid names: .*mhsa"):
        AttentionCNN(10, attention="cbam9")


def test_attention_cnn_bounds_its_attention_grid_at_224_px():
    torch.manual_seed(0)
    model = AttentionCNN(10, in_channels=3).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad(), record_attention(model) as maps:
        logits = model(x)
        stem = model.stem(x)  # (2, 64, 28, 28): 784 positions
        pooled = nn.functional.avg_pool2d(stem, 2)  # 2 x 2 windows, no partial ones at 28
        expected = model.head(model.attn(pooled).mean(dim=(2, 3)))
    assert stem.shape[-2:] == (28, 28) and model.pool_factor(28, 28) == 2
    assert maps["attn"].shape == (2, 4, 14 * 14, 14 * 14) and maps.grid("attn") == (14, 14)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert model.forward_features(x).shape == (2, 64, 14, 14)


def test_attention_cnn_pool_factor_is_the_smallest_that_fits():
    model = AttentionCNN(10, max_tokens=50)
    for h, w in [(1, 1), (7, 7), (8, 7), (25, 18), (33, 5), (100, 3), (71, 71)]:
        smallest = next(f for f in range(1, 200) if math.ceil(h / f) * math.ceil(w / f) <= 50)
        assert model.pool_factor(h, w) == smallest, (h, w)
    # Partial windows at the edge average over the positions they hold: a constant map stays constant.
    x = torch.ones(1, 64, 25, 18)
    torch.testing.assert_close(model.bound(x), torch.ones(1, 64, 7, 5))  # f = 4


@pytest.mark.parametrize("hw", [(60, 60), (128, 128), (121, 97)])
def test_attention_cnn_unchanged_up_to_128_px(hw):
    """The main job (60 px, 8 x 8 = 64 positions) and anything up to 256 positions: the
    same function as the network that never pools, given the same weights."""
    torch.manual_seed(0)
    bounded = AttentionCNN(10, in_channels=1).eval()
    unbounded = AttentionCNN(10, in_channels=1, max_tokens=None).eval()
    unbounded.load_state_dict(bounded.state_dict())
    assert set(bounded.state_dict()) == set(unbounded.state_dict())
    x = torch.randn(2, 1, *hw)
    with torch.no_grad():
        assert torch.equal(bounded(x), unbounded(x))
        assert bounded.forward_features(x).shape[-2:] == (-(-hw[0] // 8), -(-hw[1] // 8))


def test_attention_cnn_without_attention_pools_the_same_way():
    model = AttentionCNN(10, attention=None).eval()
    x = torch.randn(1, 3, 224, 160)
    with torch.no_grad():
        features = model.forward_features(x)
        torch.testing.assert_close(features, nn.functional.avg_pool2d(model.stem(x), 2, ceil_mode=True))
    assert features.shape[-2:] == (14, 10)
    with pytest.raises(ValueError, match=r"max_tokens must be an integer >= 1, got 0"):
        AttentionCNN(10, max_tokens=0)
