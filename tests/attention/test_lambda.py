"""Lambda layer against timm's layers.lambda_layer.LambdaLayer (r set: size-free) with the same
weights, the paper's einsum formulation with explicit relative embeddings in float64, and the
documented deviation of timm (a bias in the lambda convolution)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from timm.layers.lambda_layer import LambdaLayer as TimmLambdaLayer

from visattn import record_attention
from visattn.attention.lambda_layer import LambdaLayer, lambda_conv


def _perturbed(channels: int, **kwargs) -> LambdaLayer:
    module = LambdaLayer(channels, **kwargs)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for norm in (module.norm_q, module.norm_v):
            norm.running_mean.normal_(0, 0.1)
            norm.running_var.uniform_(0.5, 1.5)
    return module.eval()


def timm_like(module: LambdaLayer) -> TimmLambdaLayer:
    """timm's LambdaLayer with our weights. Its lambda convolution runs over (H, W, v) with an
    (r, r, 1) kernel, ours over (v, H, W) with (1, r, r): the same numbers, permuted."""
    ref = TimmLambdaLayer(
        module.channels, num_heads=module.heads, dim_head=module.key_dim, r=module.r, qkv_bias=False
    )
    ours = module.state_dict()
    state = {}
    for name in ref.state_dict():
        if name == "conv_lambda.weight":
            state[name] = ours[name].permute(0, 1, 3, 4, 2)  # (k, 1, 1, r, r) -> (k, 1, r, r, 1)
        elif name == "conv_lambda.bias" and module.conv_lambda.bias is None:
            state[name] = torch.zeros(module.key_dim)
        else:
            state[name] = ours[name]  # qkv, norm_q, norm_v: same names and shapes
    ref.load_state_dict(state)
    return ref.eval()


@pytest.mark.parametrize("hw", [(1, 1), (8, 8), (7, 5), (3, 10)])
@pytest.mark.parametrize(("channels", "heads", "key_dim", "r"), [(16, 4, 16, 9), (32, 2, 8, 3)])
def test_matches_timm_with_position_bias(hw, channels, heads, key_dim, r):
    module = _perturbed(channels, heads=heads, key_dim=key_dim, r=r, position_bias=True, residual=False)
    ref = timm_like(module)
    x = torch.randn(2, channels, *hw)
    with torch.no_grad():
        torch.testing.assert_close(module(x), ref(x), atol=1e-5, rtol=1e-5)


def test_default_differs_from_timm_by_the_lambda_convolution_bias():
    """Without the bias (the paper) our output is timm's with a zero bias; timm's bias b adds
    q_n . b to every value channel of each head."""
    module = _perturbed(16, heads=2, key_dim=4, r=5, residual=False)
    x = torch.randn(2, 16, 6, 5)
    ref = timm_like(module)
    with torch.no_grad():
        out = module(x)
        torch.testing.assert_close(out, ref(x), atol=1e-5, rtol=1e-5)
        bias = torch.randn(4)
        ref.conv_lambda.bias.copy_(bias)
        q = ref.norm_q(ref.qkv(x)[:, :8]).reshape(2, 2, 4, 6, 5)  # (B, h, k, H, W)
        shift = torch.einsum("bhkyx,k->bhyx", q, bias)  # (B, h, H, W)
        expected = out + shift.repeat_interleave(8, dim=1)  # each head's v = 8 channels
        torch.testing.assert_close(ref(x), expected, atol=1e-5, rtol=1e-5)


def paper_einsum(module: LambdaLayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's multi-query lambda layer (its Figure 3 einsums) in float64, with the
    position embeddings e_nm of the r x r neighbourhood written out as a (n, m, k) tensor."""
    m = copy.deepcopy(module).double()
    x = x.double()
    B, C, H, W = x.shape
    h, k, v, r = m.heads, m.key_dim, m.value_dim, m.r
    proj = torch.einsum("bchw,oc->bhwo", x, m.qkv.weight[:, :, 0, 0]).reshape(B, H * W, -1)
    queries, keys, values = proj.split([h * k, k, v], dim=-1)  # (B, N, .)

    def bn(t: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
        return (t - norm.running_mean) / (norm.running_var + norm.eps).sqrt() * norm.weight + norm.bias

    queries = bn(queries, m.norm_q).reshape(B, H * W, h, k)
    values = bn(values, m.norm_v)
    keys = keys.softmax(dim=1)  # normalised over the N context positions
    pos = torch.stack(torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij"), -1).reshape(-1, 2)
    rel = pos[None, :, :] - pos[:, None, :] + r // 2  # (n, m, 2): offset of m from n
    inside = ((rel >= 0) & (rel < r)).all(-1)  # (n, m)
    kernel = m.conv_lambda.weight[:, 0, 0]  # (k, r, r)
    emb = kernel[:, rel[..., 0].clamp(0, r - 1), rel[..., 1].clamp(0, r - 1)].permute(1, 2, 0)
    emb = emb * inside[..., None]  # (n, m, k)
    content_lambda = torch.einsum("bmk,bmv->bkv", keys, values)
    position_lambdas = torch.einsum("nmk,bmv->bnkv", emb, values)
    content_out = torch.einsum("bnhk,bkv->bnhv", queries, content_lambda)
    position_out = torch.einsum("bnhk,bnkv->bnhv", queries, position_lambdas)
    out = (content_out + position_out).reshape(B, H, W, C).permute(0, 3, 1, 2)
    return out, keys.transpose(1, 2)  # (B, C, H, W), (B, k, N)


@pytest.mark.parametrize(("hw", "r"), [((6, 7), 3), ((5, 4), 23), ((1, 3), 5)])
def test_matches_the_papers_einsum_with_explicit_position_embeddings(hw, r):
    module = _perturbed(16, heads=4, key_dim=4, r=r, residual=False)
    x = torch.randn(2, 16, *hw)
    expected, keys = paper_einsum(module, x)
    with torch.no_grad(), record_attention(module) as maps:
        out = module(x)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    key = "LambdaLayer:keys"
    assert list(maps) == [key] and maps.kind(key) == "softmax" and maps.grid(key) == hw
    torch.testing.assert_close(maps[key].double(), keys[:, None], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("hw", [(7, 5), (1, 1), (12, 9), (2, 8)])
@pytest.mark.parametrize("bias", [False, True])
def test_lambda_conv_fast_backward_equals_the_3d_convolution(hw, bias):
    """The CPU training path (its own weight gradient, the kernel cropped to what a map
    smaller than r x r can reach) against PyTorch's Conv3d, in float64."""
    conv = torch.nn.Conv3d(1, 6, (1, 5, 5), padding=(0, 2, 2), bias=bias).double()
    values = torch.randn(3, 4, *hw, dtype=torch.float64, requires_grad=True)
    out = lambda_conv(values, conv.weight, conv.bias)  # (B, v, k, H, W)
    expected = conv(values.unsqueeze(1)).transpose(1, 2)  # (B, k, v, H, W) -> (B, v, k, H, W)
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(out)
    params = [values, *conv.parameters()]
    ours = torch.autograd.grad(out, params, grad)
    theirs = torch.autograd.grad(expected, params, grad)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(
        lambda v, w: lambda_conv(v, w, None), (values[:1, :2], conv.weight.detach().requires_grad_())
    )


def test_residual_and_exact_gradients_at_batch_one():
    """Batch 1 is where PyTorch's BatchNorm backward mishandles oddly strided gradients."""
    module = _perturbed(16, key_dim=4, r=3)
    bare = copy.deepcopy(module)
    bare.residual = False
    x = torch.randn(1, 16, 5, 4)
    torch.testing.assert_close(module(x), x + bare(x))
    for mode in ("eval", "train"):
        double = copy.deepcopy(module).double().train(mode == "train")
        xd = torch.randn(1, 16, 5, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(double, (xd,), eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True)


def test_batchnorm1d_on_query_tokens_has_batchnorm2d_statistics():
    module = LambdaLayer(16, key_dim=4, r=3).train()
    x = torch.randn(3, 16, 5, 4)
    module(x)
    q = F.conv2d(x, module.qkv.weight)[:, :16]
    torch.testing.assert_close(module.norm_q.running_mean, 0.1 * q.mean((0, 2, 3)))
    torch.testing.assert_close(module.norm_q.running_var, 0.9 + 0.1 * q.var((0, 2, 3)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"heads": 3}, r"heads must divide channels \(16\), got 3"),
        ({"key_dim": 0}, "key_dim must be an integer >= 1, got 0"),
        ({"r": 4}, "r must be an odd integer >= 1, got 4"),
        ({"r": 0}, "r must be an odd integer >= 1, got 0"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LambdaLayer(16, **kwargs)
