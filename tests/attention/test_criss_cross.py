"""Criss-cross attention ("criss_cross") against a float64 masked full attention.

No installable reference exists. The reference attends over all N positions with a boolean
mask allowing exactly the query's row and column (the centre once, H + W - 1 keys), applied
``recurrence`` times with the same weights, as in the paper.
"""

from __future__ import annotations

import pytest
import torch

from visattn import record_attention
from visattn.attention.criss_cross import CrissCrossAttention


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def build(channels=16, **options) -> CrissCrossAttention:
    module = CrissCrossAttention(channels, **options)
    with torch.no_grad():
        module.gamma.fill_(0.7)
    return module.eval()


def masked_full_attention(module: CrissCrossAttention, x: torch.Tensor):
    """float64: per pass, softmax over {p : same row or same column} of Q_u . K_p."""
    weight, bias = module.qkv.weight.double(), module.qkv.bias.double()
    x = x.double()
    B, C, H, W = x.shape
    r = module.inner
    ys, xs = torch.arange(H).repeat_interleave(W), torch.arange(W).repeat(H)
    cross = (ys[:, None] == ys[None, :]) | (xs[:, None] == xs[None, :])  # (N, N)
    all_weights = []
    for _ in range(module.recurrence):
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        proj = tokens @ weight.T + bias
        q, k, v = proj[..., :r], proj[..., r : 2 * r], proj[..., 2 * r :]
        logits = (q @ k.transpose(1, 2)).masked_fill(~cross, float("-inf"))
        weights = logits.softmax(-1)  # (B, N, N)
        out = (weights @ v).transpose(1, 2).reshape(B, C, H, W)
        x = x + module.gamma.double() * out
        all_weights.append(weights)
    return x, all_weights


@pytest.mark.parametrize("recurrence", [1, 2, 3])
@pytest.mark.parametrize("hw", [(5, 7), (1, 1), (1, 6), (4, 1), (8, 8)])
def test_matches_masked_full_attention_in_float64(recurrence, hw):
    module = build(recurrence=recurrence)
    x = torch.randn(2, 16, *hw)
    expected, ref_weights = masked_full_attention(module, x)
    with torch.no_grad():
        close(module(x).double(), expected)
        with record_attention(module) as maps:
            close(module(x).double(), expected)
    h, w = hw
    assert list(maps) == [f"CrissCrossAttention:r{i}" for i in range(recurrence)]
    for i, weights in enumerate(ref_weights):
        name = f"CrissCrossAttention:r{i}"
        window, keys = maps[name], maps.keys_index(name)
        assert maps.kind(name) == "window" and maps.grid(name) == hw
        assert window.shape == (2, 1, h * w, h + w - 1) and keys.shape == (h * w, h + w - 1)
        # Every slot reads a distinct position of the cross, and carries the reference weight.
        assert (keys >= 0).all() and all(len(set(row.tolist())) == h + w - 1 for row in keys)
        close(window[:, 0].double(), weights.gather(-1, keys.expand(2, -1, -1)))


def test_centre_counted_once():
    """A 1x1 map has a single key, the centre: its output is x + gamma * V(x) exactly."""
    module = build(recurrence=1)
    x = torch.randn(3, 16, 1, 1)
    with torch.no_grad():
        v = module.qkv(x.flatten(2).transpose(1, 2))[..., 2 * module.inner :]  # (B, 1, C)
        close(module(x), x + 0.7 * v.transpose(1, 2).reshape(3, 16, 1, 1))
    # At 2x2 the centre's weight is exp(q.k_u) / (exp(q.k_u) + two neighbours), not twice that.
    x = torch.randn(1, 16, 2, 2)
    _, (weights,) = masked_full_attention(module, x)
    with record_attention(module) as maps:
        module(x)
    keys = maps.keys_index("CrissCrossAttention:r0")
    centre = (keys == torch.arange(4)[:, None]).float()
    close((maps["CrissCrossAttention:r0"][0, 0] * centre).sum(-1).double(), weights[0].diagonal())


def test_indices_built_on_the_input_device():
    """On the meta device any index built on the CPU would fail to combine with the input."""
    module = build().to("meta")
    x = torch.empty(2, 16, 5, 4, device="meta")
    assert module(x).device.type == "meta"
    with record_attention(module) as maps:
        module(x)
    assert maps.keys_index("CrissCrossAttention:r0").device.type == "meta"


def test_starts_as_the_identity_and_gamma_learns():
    module = CrissCrossAttention(16).train()
    x = torch.randn(2, 16, 5, 6)
    out = module(x)
    close(out, x, 0)
    out.square().sum().backward()
    assert module.gamma.grad.abs() > 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"reduction": 0}, "reduction must be an integer >= 1, got 0"),
        ({"recurrence": 0}, "recurrence must be an integer >= 1, got 0"),
        ({"recurrence": True}, "recurrence must be an integer >= 1, got True"),
    ],
)
def test_option_validation(options, message):
    with pytest.raises(ValueError, match=message):
        CrissCrossAttention(16, **options)
