"""SimAM: the closed-form energy against a per-neuron float64 least-squares minimisation of the
paper's energy, the module against a float64 loop over neurons, behaviour at H * W == 1,
properties of the weights, the recorded map and option checks."""

from __future__ import annotations

import math

import pytest
import torch

from visattn import record_attention
from visattn.attention.simam import SimAM, inverse_energy


def minimal_energy(values: torch.Tensor, t: int, lam: float) -> float:
    """Minimise, over (w, b), the paper's energy for neuron ``t`` of one channel:
    ``1/(M-1) sum_{i != t} (-1 - (w x_i + b))^2 + (1 - (w x_t + b))^2 + lam w^2``,
    as a weighted ridge least-squares problem in float64."""
    m = values.numel()
    rows, targets, weights = [], [], []
    for i, v in enumerate(values.tolist()):
        rows.append([v, 1.0])
        targets.append(1.0 if i == t else -1.0)
        weights.append(1.0 if i == t else 1.0 / (m - 1))
    a = torch.tensor(rows, dtype=torch.float64)
    y = torch.tensor(targets, dtype=torch.float64)
    s = torch.tensor(weights, dtype=torch.float64)
    normal = a.T @ (s[:, None] * a) + torch.diag(torch.tensor([lam, 0.0], dtype=torch.float64))
    w, b = torch.linalg.solve(normal, a.T @ (s * y))
    residual = y - (w * a[:, 0] + b)
    return float((s * residual**2).sum() + lam * w**2)


@pytest.mark.parametrize("lam", [1e-4, 0.3])
def test_closed_form_is_the_minimal_energy(lam):
    """With the statistics of the M - 1 other neurons (variance normalised by M - 1), the
    closed form the module uses is exactly the minimum of the paper's energy."""
    values = torch.randn(7, dtype=torch.float64) * 2
    for t in range(7):
        others = torch.cat([values[:t], values[t + 1 :]])
        mu, var = others.mean(), others.var(correction=0)
        closed = 1 / inverse_energy((values[t] - mu) ** 2, var, lam)
        assert math.isclose(float(closed), minimal_energy(values, t, lam), rel_tol=1e-10)


def loop_reference(x: torch.Tensor, lam: float) -> torch.Tensor:
    """Neuron by neuron: the channel's mean and variance (sum of squares / (H*W - 1)), the
    energy e_t, and x_t * sigmoid(1 / e_t)."""
    b, c, h, w = x.shape
    out = torch.empty(b, c, h, w, dtype=torch.float64)
    for bi in range(b):
        for ci in range(c):
            values = [float(v) for v in x[bi, ci].flatten()]
            mu = sum(values) / len(values)
            var = sum((v - mu) ** 2 for v in values) / max(len(values) - 1, 1)
            for i in range(h):
                for j in range(w):
                    t = float(x[bi, ci, i, j])
                    energy = 4 * (var + lam) / ((t - mu) ** 2 + 2 * var + 2 * lam)
                    out[bi, ci, i, j] = t / (1 + math.exp(-1 / energy))
    return out


@pytest.mark.parametrize("hw", [(3, 4), (5, 5), (1, 6), (2, 1)])
@pytest.mark.parametrize("lam", [1e-4, 0.5])
def test_module_matches_float64_loop(hw, lam):
    x = torch.randn(2, 3, *hw) * 1.5 + 0.3
    out = SimAM(3, e_lambda=lam)(x)
    torch.testing.assert_close(out.double(), loop_reference(x, lam), atol=1e-5, rtol=1e-5)


def test_single_position_gives_sigmoid_half_and_no_nan():
    x = torch.randn(4, 8, 1, 1)
    out = SimAM(8)(x)
    torch.testing.assert_close(out, x * torch.sigmoid(torch.tensor(0.5)))
    grad = torch.autograd.grad(SimAM(8)(x.requires_grad_()).sum(), x)[0]
    assert torch.isfinite(grad).all()


def test_weights_rank_by_distance_from_the_channel_mean():
    """Distinctive neurons (far from their channel's mean) get the larger weights, and a
    per-channel offset changes no weight."""
    module = SimAM(2)
    x = (torch.rand(1, 2, 4, 5) + 0.5) * torch.randn(1, 2, 4, 5).sign()  # |x| >= 0.5: safe to divide
    weight = module(x) / x
    distance = (x - x.mean((2, 3), keepdim=True)).abs()
    for c in range(2):
        order = distance[0, c].flatten().argsort()
        assert torch.all(weight[0, c].flatten()[order].diff() >= -1e-6)
    shifted = x + torch.tensor([3.0, -2.0]).view(1, 2, 1, 1)
    torch.testing.assert_close(module(shifted) / shifted, weight, atol=1e-5, rtol=1e-5)


def test_map_is_channel_mean_of_the_weight():
    module = SimAM(6)
    x = torch.randn(2, 6, 5, 4)
    with torch.no_grad(), record_attention(module) as maps:
        module(x)
    (key,) = maps
    deviation = (x - x.mean((2, 3), keepdim=True)) ** 2
    weight = torch.sigmoid(deviation / (4 * (deviation.sum((2, 3), keepdim=True) / 19 + 1e-4)) + 0.5)
    assert maps.kind(key) == "spatial"
    torch.testing.assert_close(maps[key], weight.mean(1, keepdim=True))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0.0, "e_lambda must be a number > 0, got 0.0"),
        (-1e-3, r"e_lambda must be a number in \[0.0, inf\), got -0.001"),
        ("small", "e_lambda must be a number in"),
    ],
)
def test_option_validation(value, message):
    with pytest.raises(ValueError, match=message):
        SimAM(8, e_lambda=value)
