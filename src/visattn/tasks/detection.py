"""Object detection: a batch is ``(images, targets)``, two lists (torchvision's form); the loss
is the sum of the detector's loss dict, whose terms are the running metrics; the evaluation is
COCO mAP@[.5:.95] (torchmetrics over pycocotools), which picks the best epoch. A run writes
``detections.png``. The engine watches for a collapsed head (``epoch_warnings``): a loss term
pinned at the value it takes for degenerate boxes, or no test box scored at all.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..data.datasets import DataBundle
from ..data.detection import collate
from ..data.detection_metrics import detection_map
from ..data.detection_sets import DETECTION_DATASETS, load_detection_dataset
from ..models.detection import DETECTORS, build_backbone, create_detector
from ..registry import TASKS
from .base import StepOutput, Task
from .detection_figures import save_detections

log = logging.getLogger("visattn.train.loop")
EVAL_BATCH = 50


@dataclass
class DetectionEval:
    """COCO metrics of the test split (``detection_map``'s dict) and the boxes found."""

    metrics: dict[str, Any]
    detections: int
    images: int
    predictions: list[dict[str, torch.Tensor]] = field(default_factory=list, repr=False)
    truth: list[dict[str, torch.Tensor]] = field(default_factory=list, repr=False)

    @property
    def score(self) -> float:
        """mAP@[.5:.95]: the number that picks the best epoch."""
        return float(self.metrics["map"] or 0.0)

    def row(self) -> dict[str, str]:
        m = self.metrics
        return {
            "test_map": f"{m['map'] or 0.0:.6f}",
            "test_map_50": f"{m['map_50'] or 0.0:.6f}",
            "test_map_75": f"{m['map_75'] or 0.0:.6f}",
            "test_detections": str(self.detections),
        }


def _sides(dataset: Any) -> np.ndarray:
    """Longer sides of the training boxes."""
    boxes = (
        dataset.boxes.numpy()
        if hasattr(dataset, "boxes")
        else np.concatenate([i.boxes for i in dataset.items])
    )
    return np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


def choose_levels(sides: np.ndarray, strides: list[int]) -> list[int]:
    """The backbone stages a detector uses for objects of these longer sides: one level, at the
    stride nearest (in log scale) to a third of the median side, when the largest object is at
    most 4x the smallest; else every stage whose stride lies within a quarter of the smallest
    and of the largest side (at least one)."""
    lo, hi, mid = (float(np.percentile(sides, q)) for q in (2, 98, 50))
    nearest = lambda v: int(np.argmin([abs(math.log(s / max(v, 1.0))) for s in strides]))  # noqa: E731
    if hi <= 4 * lo:
        return [nearest(mid / 3)]
    first, last = nearest(lo / 4), nearest(hi / 4)
    return list(range(first, last + 1))


@TASKS.register("detection")
class Detection(Task):
    """Boxes and classes of every object in an image (torchvision's detectors).

    Example:
        >>> from visattn.data.detection_sets import load_detection_dataset
        >>> task = Detection(load_detection_dataset("cluttered-mnist-detection"))
        >>> task.build_model("fcos", task.model_options("fcos", {})).kind
        'fcos'
    """

    name = "detection"
    score = "map"
    eval_columns = ("test_map", "test_map_50", "test_map_75", "test_detections")
    # a batch of 32 reached 0.659 mAP in 15 epochs where 64 reached 0.617 (docs/detection.md)
    config_defaults: ClassVar[dict[str, Any]] = {
        "model": "fcos", "dataset": "cluttered-mnist-detection", "batch_size": 32,
    }  # fmt: skip
    models, datasets = DETECTORS, DETECTION_DATASETS

    def __init__(self, bundle: DataBundle) -> None:
        super().__init__(bundle)
        self.train_metrics: tuple[str, ...] = ("loss",)
        self.ceilings: dict[str, float] = {}
        self.warnings: list[str] = []

    @classmethod
    def load_data(cls, name: str, **options: Any) -> DataBundle:
        return load_detection_dataset(name, **options)

    @classmethod
    def rebuild(cls, meta: dict[str, Any]) -> nn.Module:
        return create_detector(
            meta["model"],
            num_classes=meta["num_classes"],
            in_channels=meta["in_channels"],
            **meta.get("model_kwargs", {}),
        )

    def model_options(self, name: str, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` completed from the data: working size, normalisation, and -- unless
        given -- the levels (``choose_levels``) and, for a single level of an anchor detector
        (RetinaNet, Faster R-CNN), three anchor sizes spanning the training boxes' sides."""
        b, out = self.bundle, dict(options)
        out.setdefault("image_size", list(b.input_size))
        out.setdefault("image_mean", list(b.stats[0]))
        out.setdefault("image_std", list(b.stats[1]))
        sides = _sides(b.train)
        if "levels" not in out:
            probe = build_backbone(
                out.get("backbone", "conv"),
                b.in_channels,
                attention=None,
                attention_options=None,
                attention_stages=None,
                attention_position="end",
                options=out.get("backbone_options"),
            )
            out["levels"] = choose_levels(sides, probe.strides)
        if name != "fcos" and "anchor_sizes" not in out and len(out["levels"]) == 1:
            lo, hi = (float(np.percentile(sides, q)) for q in (5, 95))
            out["anchor_sizes"] = [[round(lo, 1), round(math.sqrt(lo * hi), 1), round(hi, 1)]]
        return out

    def build_model(self, name: str, options: dict[str, Any]) -> nn.Module:
        b = self.bundle
        model = create_detector(name, num_classes=len(b.classes), in_channels=b.in_channels, **options)
        self.train_metrics, self.ceilings = ("loss", *model.loss_names), dict(model.ceilings)
        return model

    def describe(self) -> dict[str, Any]:
        b = self.bundle
        return {
            "task": self.name,
            "num_classes": len(b.classes),
            "in_channels": b.in_channels,
            "classes": b.classes,
            "dataset": b.name,
            "input_size": list(b.input_size),
            "mean": list(b.stats[0]),
            "std": list(b.stats[1]),
        }

    def collate(self, batch: Any) -> Any:
        return collate(batch)

    def to_device(self, batch: Any, device: torch.device, memory_format: torch.memory_format) -> Any:
        images, targets = batch
        images = [x.to(device, non_blocking=True) for x in images]
        return images, [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]

    def training_loss(self, forward: Callable[..., Any], batch: Any) -> StepOutput:
        images, targets = batch
        losses = forward(images, targets)
        loss = sum(v.float() for v in losses.values())
        values = {"loss": loss.detach(), **{k: v.detach().float() for k, v in losses.items()}}
        return StepOutput(loss, len(images), values)

    @torch.no_grad()
    def predict(
        self, model: nn.Module, indices: list[int], *, device: torch.device
    ) -> list[dict[str, torch.Tensor]]:
        """Detections of the test images ``indices``, on the CPU."""
        model.eval()
        test, out = self.bundle.test, []
        for at in range(0, len(indices), EVAL_BATCH):
            images = [test[i][0].to(device) for i in indices[at : at + EVAL_BATCH]]
            out += [{k: v.cpu() for k, v in d.items()} for d in model(images)]
        return out

    def evaluate(
        self, model: nn.Module, *, device: torch.device, rank: int, world: int, channels_last: bool
    ) -> DetectionEval:
        test = self.bundle.test
        mine = list(range(rank, len(test), world))
        pairs = list(zip(mine, self.predict(model, mine, device=device), strict=True))
        if world > 1:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, pairs)
            pairs = sorted((p for part in gathered for p in part), key=lambda p: p[0])
        preds = [p for _, p in pairs]
        truth = [test.evaluation_target(i) for i, _ in pairs]
        # AP per class doubles the time: the summary computes it once, at the end
        metrics = detection_map(preds, truth, class_names=self.bundle.classes, per_class=False)
        return DetectionEval(metrics, sum(len(p["boxes"]) for p in preds), len(preds), preds, truth)

    def epoch_warnings(self, train: dict[str, float], evaluation: Any) -> list[str]:
        """Signs of a collapsed head after an epoch: a loss term at its collapse value, or no
        test box found."""
        found = []
        for term, ceiling in self.ceilings.items():
            if term in train and abs(train[term] - ceiling) < 5e-3:
                found.append(
                    f"the detector's {term} loss sat at {train[term]:.4f}, the value it takes when every box "
                    f"is degenerate ({ceiling:g}): the box head has collapsed and will not recover"
                )
        if evaluation.detections == 0:
            found.append(
                f"no box was detected on the {evaluation.images} test images: the head has collapsed "
                "or has not learned yet"
            )
        self.warnings += found
        return found

    def summary(self, evaluation: Any) -> dict[str, Any]:
        m = detection_map(evaluation.predictions, evaluation.truth, class_names=self.bundle.classes)
        sizes = {k: m[k] for k in ("map_small", "map_medium", "map_large")}
        return {
            "test_map": m["map"],
            "test_map_50": m["map_50"],
            "test_map_75": m["map_75"],
            "map_by_size": sizes,
            "mar_100": m["mar_100"],
            "per_class_ap": m["per_class"],
            "test_detections": evaluation.detections,
            "collapse_warnings": list(self.warnings),
        }

    def write_figures(
        self, model: nn.Module, evaluation: Any, run_dir: Path, *, device: torch.device
    ) -> dict[str, Any]:
        test = self.bundle.test
        picks = np.linspace(0, len(test) - 1, num=min(8, len(test))).round().astype(int).tolist()
        save_detections(
            run_dir / "detections.png",
            [test[i][0] for i in picks],
            [test.target(i) for i in picks],
            [evaluation.predictions[i] for i in picks],
            self.bundle.classes,
        )
        return {"detections_figure": "detections.png"}
