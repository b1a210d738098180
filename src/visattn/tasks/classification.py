"""Image classification: a batch is ``(images (B, C, H, W), labels (B,))``, the loss is
cross-entropy (with optional label smoothing), the metrics are top-1/top-5 and per-class
accuracy, the confusion matrix and -- where the data has object boxes -- the pointing game;
a run writes ``confusion.png`` and, for models with spatial attention, ``attention.png`` and
a quick faithfulness scorecard (``scorecard.json`` and its companions; ``explain.scorecard``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..data import DATASETS, DataBundle, load_dataset
from ..explain import (
    has_spatial_attention,
    quick_scorecard,
    records,
    save_confusion_matrix,
    save_model_attention,
    write_scorecard,
)
from ..models import create_model
from ..registry import MODELS, TASKS
from .base import StepOutput, Task, as_memory_format
from .evaluate import EvalResult, evaluate

log = logging.getLogger(__name__)


@TASKS.register("classification")
class Classification(Task):
    """One label per image.

    Args:
        bundle: the data set; its ``classes`` and ``in_channels`` shape the model.
        smoothing: label smoothing of the training loss (0 for none).
        scorecard_images: test images of the quick scorecard a run ends with (0: none).

    Example:
        >>> from visattn.data import load_dataset
        >>> task = Classification(load_dataset("mnist-sample"))
        >>> task.build_model("attention_cnn", {}).head.out_features
        10
    """

    name = "classification"
    score = "accuracy"
    train_metrics = ("loss", "accuracy")
    models, datasets = MODELS, DATASETS
    config_defaults: ClassVar[dict[str, Any]] = {"model": "attention_cnn", "dataset": "cluttered-mnist"}
    eval_columns = ("test_loss", "test_accuracy", "test_top5", "pointing_game")

    def __init__(self, bundle: DataBundle, *, smoothing: float = 0.0, scorecard_images: int = 200) -> None:
        super().__init__(bundle)
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        if scorecard_images < 0:
            raise ValueError(f"scorecard_images must be >= 0, got {scorecard_images}")
        self.smoothing, self.scorecard_images = smoothing, scorecard_images

    @classmethod
    def from_config(cls, bundle: DataBundle, config: Any) -> Classification:
        return cls(bundle, smoothing=config.smoothing, scorecard_images=config.scorecard_images)

    @classmethod
    def load_data(cls, name: str, **options: Any) -> DataBundle:
        return load_dataset(name, **options)

    @classmethod
    def rebuild(cls, meta: dict[str, Any]) -> nn.Module:
        return create_model(meta["model"], num_classes=meta["num_classes"], in_channels=meta["in_channels"],
                            **meta.get("model_kwargs", {}))  # fmt: skip

    def build_model(self, name: str, options: dict[str, Any]) -> nn.Module:
        b = self.bundle
        return create_model(name, num_classes=len(b.classes), in_channels=b.in_channels, **options)

    def describe(self) -> dict[str, Any]:
        b = self.bundle
        return {
            "task": self.name, "num_classes": len(b.classes), "in_channels": b.in_channels,
            "classes": b.classes, "dataset": b.name, "input_size": list(b.input_size),
            "mean": list(b.stats[0]), "std": list(b.stats[1]),
        }  # fmt: skip

    def collate(self, batch: Any) -> Any:
        # The data sets return whole batches from ``__getitems__``: nothing left to collate.
        return batch

    def to_device(
        self, batch: Any, device: torch.device, memory_format: torch.memory_format
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        x = as_memory_format(x.to(device, non_blocking=True), memory_format)
        return x, y.to(device, non_blocking=True)

    def training_loss(self, forward: Callable[..., Any], batch: Any) -> StepOutput:
        x, y = batch
        logits = forward(x)  # (B, classes)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.smoothing)
        accuracy = (logits.detach().argmax(dim=1) == y).float().mean()
        return StepOutput(loss, len(y), {"loss": loss.detach(), "accuracy": accuracy})

    def evaluate(
        self, model: nn.Module, *, device: torch.device, rank: int, world: int, channels_last: bool
    ) -> EvalResult:
        return evaluate(
            model, self.bundle.test, num_classes=len(self.bundle.classes), device=device, rank=rank,
            world=world, channels_last=channels_last,
        )  # fmt: skip

    def summary(self, evaluation: Any) -> dict[str, Any]:
        return evaluation.summary(self.bundle.classes)

    def write_figures(
        self, model: nn.Module, evaluation: Any, run_dir: Path, *, device: torch.device
    ) -> dict[str, Any]:
        test = self.bundle.test
        save_confusion_matrix(run_dir / "confusion.png", evaluation.confusion, self.bundle.classes)
        if not has_spatial_attention(model, test.__getitems__([0])[0].to(device)):
            return {}
        save_model_attention(model, test, self.bundle.classes, run_dir / "attention.png", device=device)
        written: dict[str, Any] = {"attention_figure": "attention.png"}
        if self.scorecard_images:
            start = time.perf_counter()
            card = quick_scorecard(model, test, images=self.scorecard_images, device=device)
            write_scorecard(card, run_dir, stats=test.stats)
            written["scorecard"] = {
                "file": "scorecard.json", "images": card.protocol["images"],
                "steps": card.protocol["steps"], "seconds": round(time.perf_counter() - start, 2),
                "methods": {r["method"]: {k: r[k] for k in ("pointing", "deletion_auc", "insertion_auc")}
                            for r in records(card)},
            }  # fmt: skip
            log.info(
                "quick scorecard: %d test images in %.1f s",
                card.protocol["images"],
                written["scorecard"]["seconds"],
            )
        return written
