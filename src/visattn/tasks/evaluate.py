"""Evaluation: loss, top-1 and top-5 accuracy, per-class accuracy, confusion matrix and --
where the data has object boxes and the model records spatial attention -- the pointing game.

Under torchrun each process evaluates every world-th image (no padding, so nothing is
counted twice) and torchmetrics sums the counts across processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from ..explain import has_spatial_attention, model_heatmap, pointing_hits


@dataclass
class EvalResult:
    """Metrics over one data split."""

    loss: float
    accuracy: float
    top5: float | None  # None with fewer than 5 classes
    per_class: list[float]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    pointing: float | None = None  # fraction of pointing-game hits, when measurable
    count: int = 0

    @property
    def score(self) -> float:
        """Top-1 accuracy: the number that picks the best epoch."""
        return self.accuracy

    def row(self) -> dict[str, str]:
        """The evaluation columns of ``metrics.csv``."""
        return {
            "test_loss": f"{self.loss:.6f}",
            "test_accuracy": f"{self.accuracy:.6f}",
            "test_top5": "" if self.top5 is None else f"{self.top5:.6f}",
            "pointing_game": "" if self.pointing is None else f"{self.pointing:.6f}",
        }

    def summary(self, classes: list[str]) -> dict[str, Any]:
        """The final evaluation as ``summary.json`` records it."""
        per_class = dict(zip(classes, self.per_class, strict=True))
        return {
            "test_accuracy": self.accuracy, "test_top5": self.top5, "test_loss": self.loss,
            "pointing_game": self.pointing, "per_class_accuracy": per_class, "confusion": self.confusion,
        }  # fmt: skip


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    num_classes: int,
    device: torch.device,
    batch_size: int = 250,
    rank: int = 0,
    world: int = 1,
    channels_last: bool = False,
) -> EvalResult:
    """Evaluate ``model`` on every image of ``dataset`` (in eval mode; the mode is restored).

    The pointing game is scored when the dataset has ``boxes`` and the model records a
    spatial attention map; the maps come from the explicit path, which computes the same
    function as the fused one.
    """
    was_training = model.training
    model.eval()
    boxes = getattr(dataset, "boxes", None)
    pointing = boxes is not None and has_spatial_attention(model, dataset.__getitems__([0])[0].to(device))
    loss = MeanMetric().to(device)
    confusion = MulticlassConfusionMatrix(num_classes).to(device)
    top5 = MulticlassAccuracy(num_classes, top_k=5, average="micro").to(device) if num_classes >= 5 else None
    hits = SumMetric().to(device)
    mine = list(range(rank, len(dataset), world))
    for start in range(0, len(mine), batch_size):
        idx = mine[start : start + batch_size]
        x, y = dataset.__getitems__(idx)
        x, y = x.to(device), y.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if pointing:
            logits, heat, _ = model_heatmap(model, x)
            hits.update(pointing_hits(heat, boxes[idx]).sum().float())
        else:
            logits = model(x)
        logits = logits.float()
        loss.update(F.cross_entropy(logits, y, reduction="none"))
        confusion.update(logits, y)
        if top5 is not None:
            top5.update(logits, y)
    model.train(was_training)
    matrix = confusion.compute().long().cpu()  # summed over processes by torchmetrics
    total = int(matrix.sum())
    per_class = matrix.diag().float() / matrix.sum(dim=1).clamp_min(1).float()
    return EvalResult(
        loss=float(loss.compute()),
        accuracy=float(matrix.diag().sum()) / max(total, 1),
        top5=None if top5 is None else float(top5.compute()),
        per_class=[round(float(v), 6) for v in per_class],
        confusion=matrix.tolist(),
        pointing=float(hits.compute()) / max(total, 1) if pointing else None,
        count=total,
    )
