"""Which methods a scorecard scores: the defaults, the baselines every method must beat, and
the check that a model records the attention the attention methods need."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..registry import EXPLAINERS
from .heatmap import has_spatial_attention
from .methods import explain
from .request import evaluating, resolve_target

BASELINES = ("random", "centre", "input")
DEFAULT_METHODS = ("attention", "grad-attention", "gradcam", "gradcam++", *BASELINES)
NEEDS_ATTENTION = frozenset({"attention", "rollout", "grad-attention"})


def resolve_methods(
    model: nn.Module,
    images: Tensor,
    methods: list[str] | tuple[str, ...] | None,
    baselines: tuple[str, ...] = BASELINES,
) -> list[str]:
    """The methods to score, in order, with the ``baselines`` added: ``DEFAULT_METHODS``
    (without the attention methods for a model that records no attention) when ``None``."""
    if methods is None:
        attention = has_spatial_attention(model, images)
        chosen = [m for m in DEFAULT_METHODS if attention or m not in NEEDS_ATTENTION]
    else:
        unknown = [m for m in methods if m not in EXPLAINERS]
        if unknown:
            raise ValueError(f"unknown method {unknown[0]!r}; valid methods: {', '.join(EXPLAINERS.names())}")
        chosen = list(methods)
    return list(dict.fromkeys([*chosen, *baselines]))


def explain_with_seed(model: nn.Module, x: Tensor, method: str, classes: Tensor, seed: int) -> Tensor:
    """``explain`` for ``classes``, passing ``seed`` to the methods that read one."""
    takes_seed = "seed" in getattr(EXPLAINERS.get(method), "options", frozenset())
    return explain(model, x, method=method, target=classes, seed=seed if takes_seed else None)


def method_maps(
    model: nn.Module,
    images: Tensor,
    methods: list[str] | tuple[str, ...] | None,
    *,
    target: Tensor | int | None = None,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Each method's maps ``(B, H, W)`` of ``images`` for ``target`` (each image's prediction
    when ``None``); ``methods=None`` takes the default methods the model supports, baselines
    included.

    Example:
        >>> maps = method_maps(model, x, ["attention", "gradcam"])  # {"attention": (B, H, W), ...}
    """
    names = resolve_methods(model, images, methods, baselines=BASELINES if methods is None else ())
    with evaluating(model), torch.no_grad():
        classes = resolve_target(target, model(images))
    return {name: explain_with_seed(model, images, name, classes, seed) for name in names}
