"""The faithfulness scorecard: for each explanation method, where its map points, how fast the
model's confidence falls and rises when pixels are taken in its order, whether it changes
when the model is re-initialised, and how it compares with maps that know nothing.

Per method and image: the pointing game (where the data has object boxes), deletion and
insertion AUC (RISE protocol, blur replacement, ``steps`` steps; ``perturb``), optionally ROAD
(``road``) and the model-randomisation check (``sanity``). Every map is first turned into a
strict pixel ranking whose ties are broken in a seeded order (``stats.tie_free_ranks``), so
all scores see the same order and the same seed gives the same numbers. See docs/explain.md.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..memory_format import to_memory_format
from .heatmap import pointing_hits
from .perturb import SharedPerturbation
from .request import evaluating, resolve_target
from .road import road_scores
from .sanity import SCOPES, reinitialised
from .scorecard_methods import BASELINES, explain_with_seed, resolve_methods
from .stats import rank_correlation, tie_free_ranks

log = logging.getLogger(__name__)

QUICK_BASELINES = ("random", "input")


@dataclass
class MethodScores:
    """Per-image scores of one method ``(n,)``, its mean curves ``(steps + 1,)``, its time, and
    its maps of the first images ``(show, H, W)``. ``None`` where a score was not asked for or
    cannot be measured (pointing without boxes)."""

    method: str
    deletion_auc: Tensor
    insertion_auc: Tensor
    deletion_curve: Tensor
    insertion_curve: Tensor
    seconds: float
    examples: Tensor
    pointing: Tensor | None = None
    road: Tensor | None = None
    sanity_rank_corr: Tensor | None = None
    head_rank_corr: Tensor | None = None


@dataclass
class Scorecard:
    """The scores of every method on the same images, and how they were measured."""

    scores: list[MethodScores]
    protocol: dict[str, Any]
    images: Tensor  # (show, C, H, W) the first images, normalised, for the figure
    boxes: Tensor | None = None  # (show, 4)


def _chunk_target(target: Tensor | int | None, lo: int, hi: int, n: int) -> Tensor | None:
    """The part of ``target`` (one class, or ``(n,)``) for images ``lo:hi``."""
    if target is None:
        return None
    t = torch.as_tensor(target)
    if t.ndim == 1 and t.numel() != n:
        raise ValueError(f"target must be one class or one per image ({n}), got {t.numel()} values")
    return t if t.ndim == 0 else t[lo:hi]


def scorecard(
    model: nn.Module,
    images: Tensor,
    *,
    boxes: Tensor | None = None,
    methods: list[str] | tuple[str, ...] | None = None,
    target: Tensor | int | None = None,
    steps: int = 20,
    blur_sigma: float = 5.0,
    seed: int = 0,
    sanity: bool = False,
    road: bool = False,
    baselines: tuple[str, ...] = BASELINES,
    chunk: int = 100,
    batch_size: int = 128,
    show: int = 6,
) -> Scorecard:
    """Score explanation methods of ``model`` on ``images``.

    Args:
        model: a classifier ``(B, C, H, W) -> (B, classes)``.
        images: ``(N, C, H, W)`` normalised input (on the model's device).
        boxes: ``(N, 4)`` object boxes ``(x0, y0, x1, y1)``, exclusive ends, for the pointing game.
        methods: names in ``EXPLAINERS``; the baselines are always added (``resolve_methods``).
        baselines: the maps every method's margin is measured against.
        target: class to explain, one or ``(N,)``; ``None``: each image's prediction.
        steps, blur_sigma: the deletion and insertion protocol (``metrics.deletion_insertion``).
        seed: tie-breaking order, random baseline, re-initialised weights and ROAD's noise.
        sanity: also run the randomisation check (two re-initialised copies, every method again).
        road: also score ROAD (pytorch-grad-cam's ``ROADCombined``; slow, see docs).
        chunk: images explained and perturbed at a time (bounds memory).
        batch_size: perturbed images per forward pass (on CPU, batches of 64 to 128 small images
            run about half again as fast as 512: they stay in cache).
        show: how many of the first images keep their maps for the figure.

    Returns:
        a ``Scorecard`` (``scorecard_files.records`` turns it into the table).

    Example:
        >>> card = scorecard(model, x, boxes=b, methods=["attention", "gradcam"], steps=20)
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"scorecard expects images (N, C, H, W) with N >= 1, got {tuple(images.shape)}")
    if boxes is not None and boxes.shape != (images.shape[0], 4):
        raise ValueError(f"boxes must be (N, 4) = ({images.shape[0]}, 4), got {tuple(boxes.shape)}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    names = resolve_methods(model, images, methods, baselines)
    n = images.shape[0]
    with evaluating(model):
        fast = to_memory_format(copy.deepcopy(model), torch.channels_last)  # faster perturbation passes
        copies = (
            {scope: reinitialised(model, images, scope=scope, seed=seed) for scope in SCOPES}
            if sanity
            else {}
        )
        parts: dict[str, dict[str, list[Tensor]]] = {m: {} for m in names}
        seconds = dict.fromkeys(names, 0.0)
        for lo in range(0, n, chunk):
            x = images[lo : lo + chunk]
            with torch.no_grad():
                classes = resolve_target(_chunk_target(target, lo, lo + chunk, n), model(x))
            start = time.perf_counter()
            shared = SharedPerturbation(
                fast, x, classes=classes, steps=steps, blur_sigma=blur_sigma, batch_size=batch_size, seed=seed
            )
            common = (time.perf_counter() - start) / len(names)  # the end points serve every method
            for method in names:
                start = time.perf_counter()
                heat = explain_with_seed(model, x, method, classes, seed)
                ranks = tie_free_ranks(heat, seed=seed)
                curves = shared(ranks.float())
                got = {
                    "deletion_auc": curves.deletion_auc,
                    "insertion_auc": curves.insertion_auc,
                    "deletion_curve": curves.deletion.sum(dim=0),
                    "insertion_curve": curves.insertion.sum(dim=0),
                }
                if boxes is not None:
                    got["pointing"] = pointing_hits(ranks, boxes[lo : lo + chunk]).double()
                if road:
                    got["road"] = road_scores(model, x, ranks, classes, seed=seed + lo)
                for scope, other in copies.items():
                    again = tie_free_ranks(explain_with_seed(other, x, method, classes, seed), seed=seed)
                    got["sanity_rank_corr" if scope == "whole" else "head_rank_corr"] = rank_correlation(
                        ranks, again
                    )
                if lo == 0:
                    got["examples"] = heat[:show].detach().cpu()
                for key, value in got.items():
                    parts[method].setdefault(key, []).append(value.detach().double().cpu())
                seconds[method] += time.perf_counter() - start + common
            log.debug("scorecard: %d of %d images", min(lo + chunk, n), n)
    scores = []
    for method in names:
        got = {
            k: (torch.stack(v).sum(dim=0) / n if k.endswith("_curve") else torch.cat(v))
            for k, v in parts[method].items()
        }
        got["examples"] = got["examples"].float()
        scores.append(MethodScores(method=method, seconds=seconds[method], **got))
    protocol = {
        "images": n, "steps": steps, "replacement": f"gaussian blur, sigma {blur_sigma:g} px",
        "blur_sigma": blur_sigma, "seed": seed, "target": "prediction" if target is None else "given",
        "intervals": "paired Student t, 95 %, over images", "baselines": list(baselines),
        "sanity": sanity, "road": road,
    }  # fmt: skip
    return Scorecard(
        scores=scores, protocol=protocol, images=images[:show].detach().cpu(),
        boxes=None if boxes is None else boxes[:show].cpu(),
    )  # fmt: skip


def scorecard_images(dataset: Dataset, images: int) -> tuple[Tensor, Tensor | None]:
    """``images`` images of ``dataset`` spread evenly over it (all of them when it has no more),
    and their ``boxes`` where the dataset has them: ``(n, C, H, W)``, ``(n, 4)`` or ``None``.

    Spread, not the first ones: a test split stored class by class (Cluttered MNIST's is)
    would otherwise give the scores of its first classes only.
    """
    total = len(dataset)
    if images < 1 or total == 0:
        raise ValueError(f"the scorecard needs at least one image, got images={images} of {total}")
    count = min(images, total)
    idx = [i * total // count for i in range(count)]
    x, _ = dataset.__getitems__(idx)
    boxes = getattr(dataset, "boxes", None)
    return x, None if boxes is None else boxes[idx]


def quick_scorecard(
    model: nn.Module,
    dataset: Dataset,
    *,
    images: int = 200,
    device: torch.device | str = "cpu",
    steps: int = 20,
    seed: int = 0,
) -> Scorecard:
    """The scorecard a training run can end with: the attention map and the random and input
    baselines on ``images`` test images spread over the split (``scorecard_images``), no
    randomisation check, no ROAD.

    Args:
        model: the trained network (it must record spatial attention).
        dataset: the test split (an ``ImageTensorDataset``; its ``boxes`` give the pointing game).
        images: how many of its images to score.
        device: where the model is.
        steps: deletion and insertion steps.
        seed: as in ``scorecard``.
    """
    x, boxes = scorecard_images(dataset, images)
    return scorecard(
        model, x.to(device), boxes=None if boxes is None else boxes.to(device), methods=["attention"],
        baselines=QUICK_BASELINES, steps=steps, seed=seed,
    )  # fmt: skip
