"""Evaluation: loss, accuracy, per-class accuracy, confusion matrix and -- where the data
has object boxes and the model records spatial attention -- the pointing game."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import ImageTensorDataset
from ..explain import model_heatmap, pointing_hits, spatial_map_names
from ..maps import record_attention


@dataclass
class EvalResult:
    """Metrics over one data split."""

    loss: float
    accuracy: float
    per_class: list[float]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    pointing: float | None = None  # fraction of pointing-game hits, when measurable
    count: int = 0


def has_spatial_attention(model: nn.Module, dataset: ImageTensorDataset, device: torch.device) -> bool:
    """Whether ``model`` records a map that can be turned into a heat map."""
    x, _ = dataset.__getitems__([0])
    with torch.no_grad(), record_attention(model) as maps:
        model(x.to(device))
    return bool(spatial_map_names(maps))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: ImageTensorDataset,
    *,
    num_classes: int,
    device: torch.device,
    batch_size: int = 250,
) -> EvalResult:
    """Evaluate ``model`` on every image of ``dataset`` (in eval mode; the mode is restored).

    The pointing game is scored when the dataset has ``boxes`` and the model records a
    spatial attention map; the maps come from the explicit path, which computes the same
    function as the fused one.
    """
    was_training = model.training
    model.eval()
    pointing = dataset.boxes is not None and has_spatial_attention(model, dataset, device)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    loss_sum, hits = 0.0, 0
    for start in range(0, len(dataset), batch_size):
        idx = list(range(start, min(start + batch_size, len(dataset))))
        x, y = dataset.__getitems__(idx)
        x, y = x.to(device), y.to(device)
        if pointing:
            logits, heat, _ = model_heatmap(model, x)
            hits += int(pointing_hits(heat, dataset.boxes[idx]).sum())
        else:
            logits = model(x)
        loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        pred = logits.argmax(dim=1)
        confusion += _confusion(y.cpu(), pred.cpu(), num_classes)
    model.train(was_training)
    total = int(confusion.sum())
    per_class = confusion.diag().float() / confusion.sum(dim=1).clamp_min(1).float()
    return EvalResult(
        loss=loss_sum / max(total, 1),
        accuracy=float(confusion.diag().sum()) / max(total, 1),
        per_class=[round(float(v), 6) for v in per_class],
        confusion=confusion.tolist(),
        pointing=hits / max(total, 1) if pointing else None,
        count=total,
    )


def _confusion(y: Tensor, pred: Tensor, num_classes: int) -> Tensor:
    return torch.bincount(y * num_classes + pred, minlength=num_classes**2).view(num_classes, num_classes)
