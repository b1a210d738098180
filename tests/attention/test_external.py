"""External attention ("external") against a float64 re-implementation of the paper's
Algorithm 1 (one head, no projections) and Algorithm 2 (heads sharing one pair of memories).

No installable reference exists.
"""

from __future__ import annotations

import pytest
import torch

from visattn import record_attention
from visattn.attention.external import ExternalAttention


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def reference(module: ExternalAttention, x: torch.Tensor):
    """float64, one sample at a time, written from the equations."""
    x = x.double()
    _, C, H, W = x.shape
    h = module.heads
    m_k = module.memory_key.weight.double()  # (S, C/h)
    m_v = module.memory_value.weight.double().T  # (S, C/h)
    outs, maps = [], []
    for f in x.flatten(2).transpose(1, 2):  # (N, C) per sample
        if h > 1:
            f = f @ module.query.weight.double().T + module.query.bias.double()
        heads_out, heads_attn = [], []
        for part in f.split(C // h, dim=-1):  # (N, C/h)
            attn = torch.exp(part @ m_k.T)  # (N, S)
            attn = attn / attn.sum(0, keepdim=True)  # softmax over the N positions
            attn = attn / attn.sum(1, keepdim=True)  # l1 over the S units
            heads_out.append(attn @ m_v)
            heads_attn.append(attn)
        out = torch.cat(heads_out, -1)  # (N, C)
        if h > 1:
            out = out @ module.proj.weight.double().T + module.proj.bias.double()
        outs.append(out.T.reshape(C, H, W))
        maps.append(torch.stack(heads_attn))
    out = torch.stack(outs)
    return (x + out if module.residual else out), torch.stack(maps)


@pytest.mark.parametrize(
    "options", [{}, {"heads": 4}, {"memory_units": 8, "residual": False}], ids=["alg1", "alg2", "s8"]
)
@pytest.mark.parametrize("hw", [(6, 5), (1, 1), (3, 8)])
def test_matches_float64_reference(options, hw):
    module = ExternalAttention(16, **options).eval()
    x = torch.randn(2, 16, *hw)
    expected, attn = reference(module, x)
    with torch.no_grad():
        close(module(x).double(), expected)
        with record_attention(module) as maps:
            close(module(x).double(), expected)
    assert list(maps) == ["ExternalAttention"] and maps.grid("ExternalAttention") is None
    recorded = maps["ExternalAttention"]
    assert recorded.shape == (2, module.heads, hw[0] * hw[1], module.memory_units)
    close(recorded.double(), attn)


def test_double_normalisation_is_not_a_plain_softmax_over_units():
    """Rows of the map sum to 1 over the units, but the map is not softmax over units (the
    usual self-attention normalisation), and a 1x1 input gives uniform weights 1/S."""
    module = ExternalAttention(16).eval()
    x = torch.randn(1, 16, 4, 4)
    with record_attention(module) as maps:
        module(x)
    attn = maps["ExternalAttention"]
    close(attn.sum(-1), torch.ones(1, 1, 16))
    plain = module.memory_key(x.flatten(2).transpose(1, 2)).softmax(-1)
    assert (attn[:, 0] - plain).abs().max() > 1e-2
    with record_attention(module) as maps:
        module(torch.randn(2, 16, 1, 1))
    close(maps["ExternalAttention"], torch.full((2, 1, 1, 64), 1 / 64))


def test_positions_are_interchangeable():
    """No position information: permuting positions permutes the output the same way."""
    module = ExternalAttention(16, heads=2).eval()
    x = torch.randn(2, 16, 5, 6)
    perm = torch.randperm(30)
    with torch.no_grad():
        out = module(x).flatten(2)
        out_perm = module(x.flatten(2)[:, :, perm].view(2, 16, 5, 6)).flatten(2)
    close(out_perm, out[:, :, perm])


def test_memories_are_shared_by_the_heads():
    module = ExternalAttention(16, heads=4, memory_units=32)
    assert module.memory_key.weight.shape == (32, 4) and module.memory_value.weight.shape == (4, 32)
    assert {n for n, _ in ExternalAttention(16).named_parameters()} == {
        "memory_key.weight",
        "memory_value.weight",
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"memory_units": 0}, "memory_units must be an integer >= 1, got 0"),
        ({"heads": 0}, "heads must be an integer >= 1, got 0"),
        ({"heads": 3}, r"heads must divide channels \(16\), got 3"),
    ],
)
def test_option_validation(options, message):
    with pytest.raises(ValueError, match=message):
        ExternalAttention(16, **options)
