"""The loop trains any task through the task interface alone: a second task, defined here,
with a detection-like batch (images and a list of per-image target dicts), its own loss,
metrics columns and score, runs end to end without any change to the loop."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from visattn.data import DATASETS, load_dataset
from visattn.models import create_model
from visattn.registry import MODELS, TASKS
from visattn.tasks import StepOutput, Task, as_memory_format
from visattn.train import load_model
from visattn.train.config import resolve_config
from visattn.train.loop import train


@dataclass
class MseResult:
    mse: float
    count: int

    @property
    def score(self) -> float:
        return -self.mse  # higher is better

    def row(self) -> dict[str, str]:
        return {"test_mse": f"{self.mse:.6f}"}


def brightness(images: torch.Tensor) -> torch.Tensor:
    """The target: each image's mean normalised intensity, (B,)."""
    return images.flatten(1).mean(dim=1)


class Brightness(Task):
    """Regress each image's mean intensity; targets travel as a list of dicts, as boxes do."""

    name = "brightness"
    score = "mse"
    train_metrics = ("loss",)
    eval_columns = ("test_mse",)
    models, datasets = MODELS, DATASETS
    config_defaults: ClassVar[dict[str, Any]] = {"model": "attention_cnn", "dataset": "mnist-sample"}

    @classmethod
    def load_data(cls, name: str, **options: Any) -> Any:
        return load_dataset(name, **options)

    @classmethod
    def rebuild(cls, meta: dict[str, Any]) -> nn.Module:
        return create_model(
            meta["model"], num_classes=1, in_channels=meta["in_channels"], **meta["model_kwargs"]
        )

    def build_model(self, name: str, options: dict[str, Any]) -> nn.Module:
        return create_model(name, num_classes=1, in_channels=self.bundle.in_channels, **options)

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "num_classes": 1, "in_channels": self.bundle.in_channels,
                "classes": ["brightness"], "dataset": self.bundle.name,
                "input_size": list(self.bundle.input_size), "mean": list(self.bundle.stats[0]),
                "std": list(self.bundle.stats[1])}  # fmt: skip

    def collate(self, batch: Any) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        images, _ = batch
        return images, [{"value": v} for v in brightness(images)]

    def to_device(self, batch: Any, device: torch.device, memory_format: torch.memory_format) -> Any:
        images, targets = batch
        return as_memory_format(images.to(device), memory_format), [
            {k: v.to(device) for k, v in t.items()} for t in targets
        ]

    def training_loss(self, forward: Any, batch: Any) -> StepOutput:
        images, targets = batch
        want = torch.stack([t["value"] for t in targets])
        loss = F.mse_loss(forward(images).float()[:, 0], want)
        return StepOutput(loss, len(targets), {"loss": loss.detach()})

    @torch.no_grad()
    def evaluate(self, model: nn.Module, *, device: torch.device, rank: int, world: int,
                 channels_last: bool) -> MseResult:  # fmt: skip
        model.eval()
        x, _ = self.bundle.test.__getitems__(list(range(rank, len(self.bundle.test), world)))
        err = (model(x.to(device)).float()[:, 0] - brightness(x).to(device)).pow(2)
        model.train()
        return MseResult(float(err.mean()), len(err))

    def summary(self, evaluation: Any) -> dict[str, Any]:
        return {"test_mse": evaluation.mse}

    def write_figures(
        self, model: nn.Module, evaluation: Any, run_dir: Path, *, device: torch.device
    ) -> dict:
        return {}


def test_a_new_task_trains_through_the_unchanged_loop(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS._entries, "brightness", Brightness)
    cfg = resolve_config(
        None, task="brightness", epochs=2, batch_size=100, lr=0.005,
        model_options={"widths": [8, 16], "strides": [2, 2]}, attention_options={"heads": 2},
        output=tmp_path / "runs",
    )  # fmt: skip
    summary = train(cfg)
    run = Path(summary["run_dir"])
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "step", "train_loss", "test_mse", "lr", "skipped_steps"]
    # Far better than the best constant guess, whose error is the targets' variance (float64).
    bundle = load_dataset(cfg.dataset)
    test_images = bundle.test.__getitems__(list(range(len(bundle.test))))[0]
    assert summary["test_mse"] < 0.1 * float(brightness(test_images).double().var(unbiased=False))
    per_epoch = [float(r["test_mse"]) for r in rows]
    assert summary["best_epoch"] == 1 + per_epoch.index(min(per_epoch))  # the lowest error is best
    assert abs(summary["best_test_mse"] + min(per_epoch)) < 1e-6
    assert json.loads((run / "summary.json").read_text())["task"] == "brightness"
    assert not (run / "confusion.png").exists()
    assert cfg.dataset == "mnist-sample"  # the task's own default
    rebuilt, meta = load_model(run)  # through the task's rebuild
    assert meta["task"] == "brightness" and isinstance(
        rebuilt, type(create_model("attention_cnn", num_classes=1))
    )
