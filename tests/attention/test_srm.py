"""Style-based Recalibration ("srm"): no installable reference exists, so the module is compared
with an independent float64 loop over samples and channels of the paper's equations, in
evaluation (running statistics) and training (batch statistics), plus the standard deviation
of a single position, the official code's unbiased variant and channel independence."""

from __future__ import annotations

import math

import pytest
import torch

from visattn import record_attention
from visattn.attention.srm import StyleRecalibration

SIZES = [(1, 1), (7, 5), (16, 16), (33, 17)]


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def randomized(channels: int, **options) -> StyleRecalibration:
    module = StyleRecalibration(channels, **options)
    with torch.no_grad():
        module.style_weight.normal_()
        module.norm.weight.uniform_(0.5, 1.5)
        module.norm.bias.normal_(0, 0.3)
        module.norm.running_mean.normal_(0, 0.3)
        module.norm.running_var.uniform_(0.5, 1.5)
    return module


def reference(module: StyleRecalibration, x: torch.Tensor, *, batch_stats: bool = False) -> torch.Tensor:
    """The paper's equations, one channel at a time, in float64."""
    B, C, H, W = x.shape
    n = H * W
    w = module.style_weight.detach().double()
    bn = module.norm
    z = torch.empty(B, C, dtype=torch.float64)
    for b in range(B):
        for c in range(C):
            values = x[b, c].double().flatten().tolist()
            mu = sum(values) / n
            denom = max(n - 1, 1) if module.unbiased else n
            sigma = math.sqrt(sum((v - mu) ** 2 for v in values) / denom + module.eps)
            z[b, c] = w[c, 0] * mu + w[c, 1] * sigma
    gates = torch.empty(B, C, dtype=torch.float64)
    for c in range(C):
        if batch_stats:  # training: the batch's mean and biased variance of z_c
            mean = z[:, c].mean()
            var = ((z[:, c] - mean) ** 2).mean()
        else:
            mean, var = bn.running_mean[c].double(), bn.running_var[c].double()
        for b in range(B):
            z_hat = (z[b, c] - mean) / math.sqrt(var + bn.eps) * bn.weight[c].double() + bn.bias[c].double()
            gates[b, c] = 1 / (1 + math.exp(-z_hat))
    return x.double() * gates[:, :, None, None]


@pytest.mark.parametrize("hw", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_matches_float64_loop_in_eval(hw):
    module = randomized(6).eval()
    x = torch.randn(3, 6, *hw) * 2 + 0.5
    with torch.no_grad():
        close(module(x).double(), reference(module, x))


@pytest.mark.parametrize("hw", [(7, 5), (4, 4)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_matches_float64_loop_in_training(hw):
    module = randomized(5).train()
    x = torch.randn(4, 5, *hw)
    with torch.no_grad():
        close(module(x).double(), reference(module, x, batch_stats=True))


def test_unbiased_option_divides_by_hw_minus_one():
    module = randomized(4, unbiased=True).eval()
    for hw in [(7, 5), (1, 1)]:
        x = torch.randn(2, 4, *hw)
        with torch.no_grad():
            close(module(x).double(), reference(module, x))
    # Away from 1x1 it is torch.std (the official code), up to eps.
    x = torch.randn(2, 4, 6, 3)
    w = module.style_weight.detach()
    z = x.mean((2, 3)) * w[:, 0] + (x.flatten(2).std(-1) ** 2 + module.eps).sqrt() * w[:, 1]
    with torch.no_grad():
        close(module(x), x * torch.sigmoid(module.norm(z))[:, :, None, None])


def test_single_position_std_is_sqrt_eps_with_finite_gradients():
    module = randomized(4, eps=1e-4).train()
    for x in [torch.randn(2, 4, 1, 1), torch.full((2, 4, 3, 3), 0.7)]:  # one position, constant maps
        x.requires_grad_(True)
        with record_attention(module) as maps:
            out = module(x)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
        assert torch.isfinite(module.style_weight.grad).all()
        # sigma = sqrt(eps) = 0.01 for every channel: z = w0 * mu + w1 * 0.01.
        z = x.detach().mean((2, 3)) * module.style_weight[:, 0] + 0.01 * module.style_weight[:, 1]
        close(maps["StyleRecalibration"], torch.sigmoid(module.norm(z)).detach())
        module.zero_grad()


def test_channels_do_not_mix():
    """Each channel's gate depends on that channel only (unlike SE's fully connected layers)."""
    module = randomized(6).eval()
    x = torch.randn(2, 6, 5, 4)
    y = x.clone()
    y[:, 2] = torch.randn(2, 5, 4) * 3
    with torch.no_grad(), record_attention(module) as maps:
        module(x)
        module(y)
    changed = (maps["StyleRecalibration"] - maps["StyleRecalibration#1"]).abs() > 1e-6
    assert changed[:, 2].all() and not changed[:, [0, 1, 3, 4, 5]].any()


def test_map_is_the_gate_and_starts_at_sigmoid_of_the_norm_bias():
    module = randomized(8).eval()
    x = torch.randn(2, 8, 6, 7)
    with torch.no_grad(), record_attention(module) as maps:
        out = module(x)
    gate = maps["StyleRecalibration"]
    assert maps.kind("StyleRecalibration") == "channel" and gate.shape == (2, 8)
    close(out, x * gate[:, :, None, None])
    fresh = StyleRecalibration(8).eval()  # zero style weights, as the official code starts
    with torch.no_grad():
        close(fresh(x), x * 0.5)


@pytest.mark.parametrize(
    ("value", "message"),
    [(0.0, "got 0.0"), (-1e-5, "got -1e-05"), (2.0, "got 2.0"), (True, "got True")],
)
def test_eps_validation(value, message):
    with pytest.raises(ValueError, match=r"eps must be a number in \(0, 1\), " + message):
        StyleRecalibration(8, eps=value)
