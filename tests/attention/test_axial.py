"""Axial attention ("axial") against two masked full attentions in float64.

No installable reference exists. The reference attends over all N positions: first with a
mask allowing only the query's column (offsets dy), then with a mask allowing only its row
(offsets dx), each with the paper's position-sensitive terms (eq. 4 of Axial-DeepLab) and
clipped offsets; the module instead runs the fused kernel on per-column and per-row lines.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from attnkit import FLASH

from visattn import record_attention
from visattn.attention.axial import AxialAttention2d, AxialLayer


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def masked_pass(layer: AxialLayer, tokens, allowed, offset):
    """One axis over all N positions: tokens (B, N, C); allowed, offset (N, N)."""
    B, N, C = tokens.shape
    heads, d, m = layer.heads, layer.head_dim, layer.max_distance
    weight = layer.qkv.weight.double()
    bias = layer.qkv.bias.double() if layer.qkv.bias is not None else torch.zeros(3 * C, dtype=torch.float64)
    q, k, v = (F.linear(tokens, weight[i * C : (i + 1) * C], bias[i * C : (i + 1) * C]) for i in range(3))
    q, k, v = (t.view(B, N, heads, d).transpose(1, 2) for t in (q, k, v))  # (B, heads, N, d)
    logits = q @ k.transpose(-1, -2)
    if layer.rel is not None:
        r_q, r_k, r_v = layer.rel.double()[:, offset.clamp(-m, m) + m]  # (N, N, d) each
        logits = logits + torch.einsum("bhid,ijd->bhij", q, r_q) + torch.einsum("bhjd,ijd->bhij", k, r_k)
    weights = (logits / d**0.5).masked_fill(~allowed, float("-inf")).softmax(-1)  # (B, heads, N, N)
    out = weights @ v
    if layer.rel is not None:
        out = out + torch.einsum("bhij,ijd->bhid", weights, r_v)
    return out.transpose(1, 2).reshape(B, N, C), weights


def reference(module: AxialAttention2d, x: torch.Tensor):
    x = x.double()
    B, C, H, W = x.shape
    ys, xs = torch.arange(H).repeat_interleave(W), torch.arange(W).repeat(H)  # (N,) each
    tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
    same_col, dy = xs[:, None] == xs[None, :], ys[None, :] - ys[:, None]
    same_row, dx = ys[:, None] == ys[None, :], xs[None, :] - xs[:, None]
    tokens, w_h = masked_pass(module.height, tokens, same_col, dy)
    tokens, w_w = masked_pass(module.width, tokens, same_row, dx)
    out = tokens.transpose(1, 2).reshape(B, C, H, W)
    return (x + out if module.residual else out), w_h, w_w


@pytest.mark.parametrize(
    "options",
    [{}, {"pos": "none"}, {"max_distance": 2, "heads": 2}, {"residual": False, "qkv_bias": True}],
    ids=["default", "no-pos", "clipped", "no-residual"],
)
@pytest.mark.parametrize("hw", [(5, 7), (1, 1), (6, 1), (8, 8)])
def test_equals_two_masked_full_attentions_in_float64(options, hw):
    module = AxialAttention2d(16, **options).eval()
    x = torch.randn(2, 16, *hw)
    expected, w_h, w_w = reference(module, x)
    with torch.no_grad():
        close(module(x).double(), expected)
        with record_attention(module) as maps:
            close(module(x).double(), expected)
    h, w = hw
    heads = module.heads
    for part, ref, k in (("height", w_h, h), ("width", w_w, w)):
        name = f"AxialAttention2d:{part}"
        window, keys = maps[name], maps.keys_index(name)
        assert maps.kind(name) == "window" and maps.grid(name) == hw
        assert window.shape == (2, heads, h * w, k) and keys.shape == (h * w, k)
        close(window.double(), ref.gather(-1, keys.expand(2, heads, -1, -1)))
        # The gathered slots hold all of the reference's weight: nothing outside the line.
        close(window.double().sum(-1), torch.ones(2, heads, h * w, dtype=torch.float64))


def test_position_terms_matter_and_clip_beyond_max_distance():
    """With position terms the output depends on the layout: a flipped input does not give
    the flipped output (it does without them); tables larger than the axis change nothing."""
    x = torch.randn(1, 16, 6, 5)

    def flip(t):
        return t.flip(-1)

    plain = AxialAttention2d(16, pos="none").eval()
    relative = AxialAttention2d(16).eval()
    with torch.no_grad():
        close(plain(flip(x)), flip(plain(x)))
        assert (relative(flip(x)) - flip(relative(x))).abs().max() > 1e-3
        small = AxialAttention2d(16, max_distance=5).eval()
        state = relative.state_dict()
        for axis in ("height", "width"):
            state[f"{axis}.rel"] = state[f"{axis}.rel"][:, 31 - 5 : 31 + 6]
        small.load_state_dict(state)
        close(small(x), relative(x))


def test_without_position_terms_the_flash_kernel_runs(sdpa_calls, fused_kernel):
    with torch.no_grad():
        AxialAttention2d(32, pos="none").eval()(torch.randn(2, 32, 9, 11))
    # Per column (B*W lines of H) then per row (B*H lines of W).
    assert sdpa_calls == [((22, 8, 9, 4), FLASH), ((18, 8, 11, 4), FLASH)]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"heads": 0}, "heads must be an integer >= 1, got 0"),
        ({"heads": 3}, r"heads must divide channels \(16\), got 3"),
        ({"pos": "sine"}, "pos must be one of 'relative', 'none', got 'sine'"),
        ({"max_distance": -1}, "max_distance must be an integer >= 0, got -1"),
    ],
)
def test_option_validation(options, message):
    with pytest.raises(ValueError, match=message):
        AxialAttention2d(16, **options)
