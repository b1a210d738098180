"""Images per second of visattn's ResNet-18 with attention against timm's, interleaved.

For each attention (``"none"`` for the plain network) and each (image size, batch), both
models are built with random weights and the same ``attention`` / ``attn_layer`` name, put in
channels-last layout with their inputs, and timed in one process:

- inference: evaluation mode, ``torch.no_grad``, one forward of the batch;
- training: one step of forward, cross-entropy on fixed random labels, backward and SGD
  (momentum 0.9, a learning rate small enough that the weights barely move).

A ``timm`` row's ratios are its time over visattn's in the same round (median over rounds):
above 1, visattn is faster.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int
from ..registry import MODELS
from .baselines import timm_missing
from .measures import interleave, paired_ratio

__all__ = ["ModelRow", "model_suite_unavailable", "run_model_suite"]

log = logging.getLogger(__name__)
MODEL = "resnet18"


@dataclass(frozen=True)
class ModelRow:
    """One model x attention x setting x variant (NaN where not measured)."""

    model: str
    attention: str
    variant: str
    image_size: int
    batch: int
    infer_img_s: float = math.nan
    train_img_s: float = math.nan
    infer_ratio: float = math.nan
    train_ratio: float = math.nan
    note: str = ""


def model_suite_unavailable() -> str | None:
    """Why ``run_model_suite`` cannot compare visattn's network with timm's, or ``None``."""
    return timm_missing()


def _visattn_resnet18(attention: str, num_classes: int) -> nn.Module:
    from ..models import create_model

    return create_model(MODEL, num_classes=num_classes, attention=None if attention == "none" else attention)


def _timm_resnet18(attention: str, num_classes: int) -> nn.Module:
    import timm

    block_args = None if attention == "none" else {"attn_layer": attention}
    return timm.create_model(MODEL, pretrained=False, num_classes=num_classes, block_args=block_args)


def _infer_call(model: nn.Module, x: Tensor) -> Callable[[], None]:
    def call() -> None:
        with torch.no_grad():
            model(x)

    return call


def _train_call(model: nn.Module, x: Tensor, y: Tensor) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def call() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return call


def run_model_suite(
    attentions: Sequence[str] = ("none", "se", "cbam", "eca"),
    settings: Sequence[tuple[int, int]] = ((32, 64), (224, 32)),
    *,
    warmup: int = 1,
    repeats: int = 5,
    num_classes: int = 1000,
    channels_last: bool = True,
    device: torch.device | str = "cpu",
    build: Callable[[str, int], nn.Module] | None = None,
) -> list[ModelRow]:
    """Inference and training throughput of visattn's ResNet-18 and timm's, per attention.

    Args:
        attentions: names understood by both (visattn's registry and timm's ``attn_layer``),
            ``"none"`` for the network without attention.
        settings: ``(image size, batch)`` pairs.
        warmup: unrecorded interleaved rounds before each timing.
        repeats: recorded rounds (img/s from the median).
        num_classes: width of the classifier of both networks.
        channels_last: run both networks and inputs in channels-last layout.
        device: where everything runs.
        build: ``(attention, num_classes) -> model`` for the visattn side; by default
            ``create_model("resnet18", ...)``. timm must be installed (see
            ``model_suite_unavailable``); ``RuntimeError`` otherwise.

    Example:
        >>> rows = run_model_suite(["se"], [(32, 2)], repeats=1)  # doctest: +SKIP
    """

    def positive(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    if not settings or not all(len(s) == 2 and positive(s[0]) and positive(s[1]) for s in settings):
        raise ValueError(f"settings must be (image size, batch) pairs of positive integers, got {settings!r}")
    check_int("repeats", repeats)
    if missing := timm_missing():
        raise RuntimeError(f"the ResNet-18 comparison needs timm: {missing}")
    if build is None:
        MODELS.get(MODEL)  # KeyError listing the registered models
        build = _visattn_resnet18
    device = torch.device(device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    rows: list[ModelRow] = []
    for image, batch in settings:
        gen = torch.Generator().manual_seed(image)
        x = torch.randn(batch, 3, image, image, generator=gen).to(device, memory_format=layout)
        y = torch.randint(num_classes, (batch,), generator=gen).to(device)
        for attention in attentions:
            models = {"visattn": build(attention, num_classes)}
            models["timm"] = _timm_resnet18(attention, num_classes)
            models = {v: m.to(device, memory_format=layout) for v, m in models.items()}
            timing = {"warmup": warmup, "repeats": repeats, "device": device}
            for model in models.values():
                model.eval()
            infer = interleave({v: _infer_call(m, x) for v, m in models.items()}, **timing)
            for model in models.values():
                model.train()
            train = interleave({v: _train_call(m, x, y) for v, m in models.items()}, **timing)
            for variant in models:
                other = variant != "visattn"
                row = ModelRow(
                    MODEL,
                    attention,
                    variant,
                    image,
                    batch,
                    infer_img_s=batch / infer[variant].median,
                    train_img_s=batch / train[variant].median,
                    infer_ratio=paired_ratio(infer["visattn"], infer[variant]) if other else math.nan,
                    train_ratio=paired_ratio(train["visattn"], train[variant]) if other else math.nan,
                )
                log.info("%s", row)
                rows.append(row)
    return rows
