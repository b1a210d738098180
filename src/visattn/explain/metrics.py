"""Deletion and insertion (Petsiuk, Das & Saenko 2018, "RISE", arXiv:1806.07421).

Pixels are taken in the order of the explanation map, most relevant first, in ``steps``
equal steps. *Deletion* replaces them, step by step, with a blurred copy of the image;
*insertion* starts from the blurred copy and puts the original pixels back. After every step
the model's softmax probability of the target class is read; the area under that curve over
the fraction of pixels changed (trapezoid rule, ``steps + 1`` points from 0 to 1) is the
score. A faithful map makes deletion fall fast (low AUC) and insertion rise fast (high AUC).

Replacement: RISE deletes to black and inserts from a blur; here both use the same Gaussian
blur (standard deviation ``blur_sigma`` pixels, kernel truncated at 3 sigma, edges
replicated), so that neither curve rewards a map for finding where black pixels look out of
distribution. Ties in a map are broken by a seeded random order: the same seed gives the
same curves. Every perturbed image of a batch goes through the model in chunks of
``batch_size``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .request import evaluating, resolve_target


@dataclass(frozen=True)
class PerturbationCurves:
    """Deletion and insertion curves ``(B, steps + 1)`` and their areas ``(B,)``."""

    deletion: Tensor
    insertion: Tensor

    @property
    def deletion_auc(self) -> Tensor:
        return auc(self.deletion)

    @property
    def insertion_auc(self) -> Tensor:
        return auc(self.insertion)


def auc(curve: Tensor) -> Tensor:
    """Trapezoid area of ``(B, steps + 1)`` points evenly spaced on [0, 1] -> ``(B,)``."""
    steps = curve.shape[1] - 1
    return (curve.sum(dim=1) - 0.5 * (curve[:, 0] + curve[:, -1])) / steps


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """``(B, C, H, W)`` blurred by a separable Gaussian of ``sigma`` pixels (edges replicated)."""
    if not sigma > 0:
        raise ValueError(f"blur_sigma must be positive, got {sigma}")
    radius = math.ceil(3 * sigma)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(images)
    c = images.shape[1]
    x = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # along W
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # along H


def relevance_order(heat: Tensor, *, seed: int = 0) -> Tensor:
    """``(B, H, W)`` -> ``(B, H*W)`` flat pixel indices, most relevant first; ties in a
    seeded random order."""
    flat = heat.flatten(1)
    shuffle = torch.randperm(flat.shape[1], generator=torch.Generator().manual_seed(seed)).to(flat.device)
    ranked = torch.sort(flat[:, shuffle], dim=1, descending=True, stable=True).indices
    return shuffle[ranked]


def step_masks(order: Tensor, steps: int) -> Tensor:
    """``(B, steps + 1, H*W)`` float: 1 where a pixel is among the first ``k / steps`` of its
    image's order, for k = 0 .. steps."""
    b, n = order.shape
    counts = torch.round(torch.arange(steps + 1, dtype=torch.float64) * n / steps).long()  # (steps + 1,)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=order.device).expand(b, n))
    return (rank[:, None, :] < counts.to(order.device)[None, :, None]).float()


def deletion_insertion(
    model: nn.Module,
    images: Tensor,
    heat: Tensor,
    *,
    target: Tensor | int | None = None,
    steps: int = 20,
    blur_sigma: float = 5.0,
    batch_size: int = 256,
    seed: int = 0,
) -> PerturbationCurves:
    """Deletion and insertion curves of explanation maps.

    Args:
        model: the classifier the maps explain.
        images: ``(B, C, H, W)`` normalised input.
        heat: ``(B, H, W)`` maps (higher = more relevant).
        target: class per image (or one for all); ``None`` uses each clean prediction.
        steps: pixel steps from nothing to everything changed.
        blur_sigma: standard deviation of the blur that replaces pixels, in pixels.
        batch_size: perturbed images per forward pass.
        seed: seed of the tie-breaking order.

    Returns:
        the curves of the target's softmax probability, ``(B, steps + 1)`` each.

    Example:
        >>> curves = deletion_insertion(model, x, explain(model, x, method="gradcam"), steps=10)
        >>> curves.deletion_auc.mean(), curves.insertion_auc.mean()
    """
    if images.ndim != 4 or heat.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(
            f"deletion_insertion expects images (B, C, H, W) and heat (B, H, W), "
            f"got {tuple(images.shape)} and {tuple(heat.shape)}"
        )
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    b, c, h, w = images.shape
    with evaluating(model), torch.no_grad():
        classes = resolve_target(target, model(images))
        blurred = gaussian_blur(images, blur_sigma)
        masks = step_masks(relevance_order(heat, seed=seed), steps).view(b, steps + 1, 1, h, w)
        original, soft = images[:, None], blurred[:, None]  # (B, 1, C, H, W)
        curves = []
        for start, fill in ((original, soft), (soft, original)):  # deletion, then insertion
            stack = start * (1 - masks) + fill * masks  # (B, steps + 1, C, H, W)
            probs = torch.cat(
                [model(chunk).softmax(dim=1) for chunk in stack.view(-1, c, h, w).split(batch_size)]
            )  # (B * (steps + 1), classes)
            picked = probs.view(b, steps + 1, -1).gather(2, classes.view(b, 1, 1).expand(b, steps + 1, 1))
            curves.append(picked[..., 0])
    return PerturbationCurves(deletion=curves[0], insertion=curves[1])
