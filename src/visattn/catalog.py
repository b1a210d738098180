"""What each registered attention mechanism costs: parameters, FLOPs and how FLOPs grow with
the number of positions. Feeds ``visattn attention`` and docs/attention.md."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .attention import ATTENTION
from .flops import count_flops


@dataclass(frozen=True)
class MechanismCost:
    """One row of the catalogue."""

    name: str
    family: str
    paper: str
    complexity: str  # declared by the mechanism
    parameters: int
    gflops: float  # forward, batch 1, at the catalogue's channels and size
    growth: float  # measured exponent e in FLOPs ~ N^e between size/2 and size


def _flops(name: str, channels: int, size: int) -> int:
    cls = ATTENTION.get(name)
    # Shapes only: meta tensors make the count free; fall back to real tensors for
    # mechanisms whose forward needs values.
    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                module = cls(channels).eval()
                x = torch.zeros(1, channels, size, size)
            return count_flops(module, x)
        except (NotImplementedError, RuntimeError):
            if device == "cpu":
                raise
    raise AssertionError("unreachable")


def mechanism_cost(name: str, *, channels: int = 256, size: int = 56) -> MechanismCost:
    """Parameters at ``channels``, forward FLOPs at ``size`` x ``size`` (attention matmuls
    counted whichever kernel runs), and the FLOP growth exponent in N = size²."""
    cls = ATTENTION.get(name)
    with torch.device("meta"):
        params = sum(p.numel() for p in cls(channels).parameters())
    full = _flops(name, channels, size)
    half = _flops(name, channels, max(1, size // 2))
    ratio = size**2 / max(1, size // 2) ** 2
    growth = math.log(full / half) / math.log(ratio) if full > 0 and half > 0 else 0.0
    return MechanismCost(name, cls.family, cls.paper, cls.complexity, params, full / 1e9, growth)


def catalog(*, channels: int = 256, size: int = 56) -> list[MechanismCost]:
    """``mechanism_cost`` for every registered mechanism, by name."""
    return [mechanism_cost(n, channels=channels, size=size) for n in ATTENTION.names()]


def catalog_markdown(*, channels: int = 256, size: int = 56) -> str:
    """docs/attention.md: the catalogue as a Markdown page."""
    rows = catalog(channels=channels, size=size)
    lines = [
        "# Attention mechanisms",
        "",
        "Generated from the registry by `visattn attention --markdown > docs/attention.md`;",
        "a test checks that this page lists exactly the registered mechanisms.",
        "",
        f"Parameters at C = {channels}; forward GFLOPs for one {channels} x {size} x {size} feature",
        "map, counted by `torch.utils.flop_counter`: matrix products and convolutions, a",
        "multiply-add counting 2, attention matmuls included even where the fused kernel runs;",
        "element-wise work (pooling, gating, normalisation) is not counted, so pure gates show",
        "almost nothing. Complexity in the number of positions N = H x W as declared by each",
        f"mechanism, and the exponent e of counted FLOPs ~ N^e measured between {max(1, size // 2)}²",
        f"and {size}² positions (below 2 for quadratic mechanisms where the projections still",
        "dominate; - where the counted FLOPs do not depend on N). A test checks that mechanisms",
        "declared O(N) measure e <= 1.1 and quadratic ones e >= 1.5.",
        "",
        "| name | family | parameters | GFLOPs | complexity | measured e | paper |",
        "|---|---|---:|---:|---|---:|---|",
    ]
    for r in rows:
        growth = "-" if r.growth < 0.05 else f"{r.growth:.2f}"
        cells = [
            f"`{r.name}`",
            r.family,
            f"{r.parameters:,}",
            f"{r.gflops:.3f}",
            r.complexity,
            growth,
            r.paper,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
