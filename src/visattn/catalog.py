"""What each registered attention mechanism and model costs: parameters, FLOPs and how FLOPs
grow with the number of positions. Feeds ``visattn attention``, ``visattn models``,
docs/attention.md and docs/models.md."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .attention import ATTENTION
from .flops import count_flops
from .models import default_attention
from .registry import MODELS


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


# Published figures (ImageNet, 224 px, 1000 classes) to print beside ours: (model, attention)
# -> (parameters in millions, GMACs, source).
PUBLISHED = {
    ("resnet50", "none"): (25.56, 3.858, "Woo et al. 2018 (CBAM), Table 4"),
    ("resnet50", "se"): (28.09, 3.860, "Woo et al. 2018 (CBAM), Table 4"),
    ("resnet50", "cbam"): (28.09, 3.864, "Woo et al. 2018 (CBAM), Table 4"),
    ("resnet50", "eca"): (25.56, 3.86, "Wang et al. 2020 (ECA-Net): +80 parameters, +4.7e-4 GFLOPs"),
    # Rounded in the source: compare to the precision given.
    ("vit_base_patch16", "mhsa"): (86, 17.5, "Liu et al. 2021 (Swin), Table 1 (DeiT-B / ViT-B/16)"),
    ("swin_tiny", "swin"): (28, 4.5, "Liu et al. 2021 (Swin), Table 1"),
    ("swin_small", "swin"): (50, 8.7, "Liu et al. 2021 (Swin), Table 1"),
    ("swin_base", "swin"): (88, 15.4, "Liu et al. 2021 (Swin), Table 1"),
}


@dataclass(frozen=True)
class ModelCost:
    name: str
    attention: str
    parameters: int
    gmacs: float  # counted FLOPs / 2, at batch 1


def model_cost(
    name: str, *, attention: str | None = None, size: int = 224, num_classes: int = 1000
) -> ModelCost:
    """Parameters and multiply-adds (attention matmuls included) of a registered model,
    with its default attention or the given one (``"none"`` for none)."""
    builder = MODELS.get(name)
    options = {} if attention is None else {"attention": None if attention == "none" else attention}
    with torch.device("meta"):
        model = builder(num_classes=num_classes, in_channels=3, **options).eval()
        x = torch.zeros(1, 3, size, size)
    params = sum(p.numel() for p in model.parameters())
    flops = count_flops(model, x)
    used = attention or default_attention(name)
    return ModelCost(name, used, params, flops / 2e9)


def models_markdown(*, size: int = 224) -> str:
    """docs/models.md: every registered model with its default attention, and the published
    ResNet-50 variants beside ours."""
    lines = [
        "# Models",
        "",
        "Generated from the registry by `visattn models --markdown > docs/models.md`; a test",
        "checks that this page lists exactly the registered models.",
        "",
        f"Parameters at 1000 classes and 3 input channels; multiply-adds (GMACs) of one {size} x {size}",
        "image, counted by `torch.utils.flop_counter` (matrix products and convolutions, attention",
        "matmuls included even where the fused kernel runs) and halved, the unit papers report.",
        "",
        "| model | attention | parameters (M) | GMACs |",
        "|---|---|---:|---:|",
    ]
    for name in MODELS.names():
        cost = model_cost(name, size=size)
        lines.append(f"| `{name}` | {cost.attention} | {cost.parameters / 1e6:.2f} | {cost.gmacs:.3f} |")
    lines += [
        "",
        "## Against published figures",
        "",
        "| model | attention | parameters (M) | published (M) | difference | GMACs | published | source |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for (name, attention), (params, gmacs, source) in PUBLISHED.items():
        if name not in MODELS:
            continue
        cost = model_cost(name, attention=attention, size=224)
        diff = (cost.parameters / 1e6 - params) / params
        lines.append(
            f"| `{name}` | {attention} | {cost.parameters / 1e6:.3f} | {params:.2f} | {diff:+.2%} | "
            f"{cost.gmacs:.3f} | {gmacs:.3f} | {source} |"
        )
    lines += [
        "",
        "ResNet-50's 4.089 GMACs equal torchvision's published figure; the CBAM paper counts",
        "3.858 G with another tool, so compare what attention adds: SE +0.0025 G, CBAM +0.0064 G,",
        "ECA +0.00009 G here against +0.002, +0.006 and +0.00047 G published. ECA's adaptive",
        "kernel rule gives kernels 5, 5, 5, 7 for C = 256 ... 2048 (+86 parameters); the paper's",
        "3, 5, 5, 7 (+80) is reached by passing those sizes explicitly.",
    ]
    return "\n".join(lines) + "\n"
