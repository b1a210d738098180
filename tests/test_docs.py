"""Generated documentation stays in step with the code."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from visattn import create_attention
from visattn.attention import ATTENTION
from visattn.catalog import PUBLISHED, catalog_markdown, mechanism_cost, model_cost, models_markdown
from visattn.flops import count_flops

ROOT = Path(__file__).resolve().parents[1]


def test_attention_page_is_generated_from_the_registry():
    page = (ROOT / "docs" / "attention.md").read_text()
    assert page == catalog_markdown(), "regenerate with: visattn attention --markdown > docs/attention.md"


def test_models_page_is_generated_from_the_registry():
    page = (ROOT / "docs" / "models.md").read_text()
    assert page == models_markdown(), "regenerate with: visattn models --markdown > docs/models.md"


def test_published_resnet50_parameter_counts_within_half_a_percent():
    for (name, attention), (params, _, _) in PUBLISHED.items():
        if name != "resnet50":  # the transformer figures are rounded to whole millions
            continue
        cost = model_cost(name, attention=attention)
        assert abs(cost.parameters / 1e6 - params) / params < 0.005, (name, attention, cost.parameters)


def test_catalogue_counts_attention_matmuls():
    cost = mechanism_cost("mhsa", channels=64, size=16)
    c = 64

    def flops(n: int) -> int:
        projections = 2 * n * c * 3 * c + 2 * n * c * c  # qkv and output projections
        matmuls = 2 * 2 * n * n * c  # q k^T and weights @ v
        position = 2 * n * c * 2 * c  # the sine code's projection onto q and k
        return projections + matmuls + position

    assert cost.gflops * 1e9 == flops(256)
    assert cost.parameters == 4 * c * c + 4 * c
    # The fused kernel's matmuls are counted like the explicit path's.
    module = create_attention("mhsa", c).eval()
    assert count_flops(module, torch.randn(1, c, 16, 16)) == cost.gflops * 1e9
    assert abs(cost.growth - math.log(flops(256) / flops(64)) / math.log(4)) < 1e-12


def test_declared_complexity_matches_the_measured_flop_growth():
    """A mechanism declared linear in N must not hide an N x N product, and a quadratic one
    must show it (counted FLOPs: matmuls and convolutions)."""
    for name in ATTENTION.names():
        cost = mechanism_cost(name, channels=64, size=56)
        assert cost.complexity.startswith("O(N"), name
        if cost.complexity == "O(N)":
            assert cost.growth <= 1.1, (name, cost.growth)
        if cost.complexity.startswith("O(N²"):
            assert cost.growth >= 1.5, (name, cost.growth)
