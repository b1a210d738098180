"""What every explanation method receives, and the helpers they share.

A method is a function ``(request) -> (B, H, W)`` registered in ``EXPLAINERS``; ``explain``
builds the request, so methods never see the user's raw arguments. Every map is scaled to
[0, 1] per image (a flat map stays 0), at the input's size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HEAD_FUSIONS = ("mean", "max", "min")

M = TypeVar("M", bound=Callable[..., Tensor])


@dataclass
class Request:
    """One call of ``explain``.

    Attributes:
        model: the network, in evaluation mode for the duration of the call.
        images: ``(B, C, H, W)`` normalised input.
        target: ``(B,)`` int64 class per image, or ``None`` for the prediction.
        layer: a recorded map name (attention) or a module name (CAMs); ``None`` infers it.
        head_fusion: how rollout merges heads: mean, max or min.
        discard_ratio: fraction of the weakest fused weights rollout drops in every layer.
        seed: seed of the random baseline.
    """

    model: nn.Module
    images: Tensor
    target: Tensor | None = None
    layer: str | None = None
    head_fusion: str = "mean"
    discard_ratio: float = 0.0
    seed: int = 0
    _logits: Tensor | None = field(default=None, repr=False)

    @property
    def size(self) -> tuple[int, int]:
        return (self.images.shape[-2], self.images.shape[-1])

    def logits(self) -> Tensor:
        """The model's ``(B, classes)`` output for the images (computed once, no graph)."""
        if self._logits is None:
            with torch.no_grad():
                self._logits = self.model(self.images)
        return self._logits

    def classes(self, logits: Tensor | None = None) -> Tensor:
        """``(B,)`` the class to explain per image: the target, or the prediction."""
        logits = self.logits() if logits is None else logits
        return resolve_target(self.target, logits)


def resolve_target(target: Tensor | int | None, logits: Tensor) -> Tensor:
    """``(B,)`` int64 target classes, checked against the logits' class count.

    Args:
        target: one class for every image, one per image ``(B,)``, or ``None`` for each
            image's prediction.
        logits: ``(B, classes)``.
    """
    b, classes = logits.shape
    if target is None:
        return logits.argmax(dim=1)
    t = torch.as_tensor(target, device=logits.device)
    if t.is_floating_point() or t.ndim > 1 or (t.ndim == 1 and t.numel() != b):
        raise ValueError(
            f"target must be a class index or one per image ({b}), got {tuple(t.shape)} {t.dtype}"
        )
    if bool(((t < 0) | (t >= classes)).any()):
        raise ValueError(f"target must be a class in 0..{classes - 1}, got {t.tolist()}")
    return t.long().expand(b).clone()


def normalise(heat: Tensor) -> Tensor:
    """``(B, H, W)`` -> the same scaled to [0, 1] per image; a flat map becomes zeros."""
    low = heat.amin(dim=(1, 2), keepdim=True)
    span = heat.amax(dim=(1, 2), keepdim=True) - low
    return (heat - low) / span.clamp_min(torch.finfo(heat.dtype).tiny)


def upsample(grid_heat: Tensor, size: tuple[int, int]) -> Tensor:
    """``(B, h, w)`` -> ``(B, H, W)`` bilinear (half-pixel centres), scaled to [0, 1]."""
    heat = F.interpolate(grid_heat.unsqueeze(1).float(), size=size, mode="bilinear", align_corners=False)
    return normalise(heat[:, 0])  # (B, H, W)


def takes(*options: str) -> Callable[[M], M]:
    """Declare the ``explain`` options a method reads (``layer``, ``head_fusion``,
    ``discard_ratio``, ``seed``); ``explain`` refuses any other."""

    def mark(method: M) -> M:
        method.options = frozenset(options)  # type: ignore[attr-defined]
        return method

    return mark


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Evaluation mode for the duration of the block; every module's own flag restored."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode
