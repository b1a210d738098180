"""What a run writes besides checkpoints: ``config.yaml``, one ``metrics.csv`` and one
``timing.csv`` row per epoch, TensorBoard scalars, ``best.safetensors`` and ``summary.json``.
Only the main process writes."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_write_text
from ..data import DataBundle
from ..models import default_attention
from ..tasks import Evaluation, Task
from . import distributed as D
from .checkpoint import save_weights
from .config import TrainConfig
from .resume import TrainState
from .run_files import TIMING_COLUMNS, CsvLog

log = logging.getLogger("visattn.train.loop")


def metric_columns(task: Task) -> list[str]:
    """The ``metrics.csv`` header of a run of ``task``."""
    train = [f"train_{name}" for name in task.train_metrics]
    return ["epoch", "step", *train, *task.eval_columns, "lr", "skipped_steps"]


class RunRecord:
    """The per-epoch files of the run in ``run_dir``; on resume (``new=False``) the logs are
    cut back to the ``completed`` epochs, so no row is ever written twice."""

    def __init__(
        self, run_dir: Path, cfg: TrainConfig, task: Task, place: D.Dist, *, completed: int, new: bool
    ) -> None:
        self.run_dir, self.main = run_dir, place.main
        self.metrics = CsvLog(run_dir / "metrics.csv", metric_columns(task))
        self.timing = CsvLog(run_dir / "timing.csv", TIMING_COLUMNS)
        self.tensorboard = None
        if not self.main:
            return
        if new:
            atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
        self.metrics.start(completed)
        self.timing.start(completed)
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))

    def save_best(self, model: nn.Module, meta: dict[str, Any]) -> None:
        save_weights(self.run_dir / "best.safetensors", model, meta)

    def epoch_row(self, state: TrainState, train: dict[str, float], evaluation: Evaluation) -> dict[str, Any]:
        """Append and return the ``metrics.csv`` row of the epoch just finished."""
        row = {
            "epoch": state.epoch, "step": state.step, **{f"train_{k}": f"{v:.6f}" for k, v in train.items()},
            **evaluation.row(), "lr": f"{state.scheduler.get_last_lr()[0]:.6g}",
            "skipped_steps": state.skipped,
        }  # fmt: skip
        self.metrics.append(row)
        if self.tensorboard is not None:
            for key, value in row.items():
                if key.startswith(("train_", "test_")) and value != "":
                    self.tensorboard.add_scalar(key, float(value), state.epoch)
        return row

    def epoch_timing(self, epoch: int, images: int, seconds: float, eval_seconds: float) -> dict[str, float]:
        """Append the ``timing.csv`` row; returns the rate and duration for the reporter."""
        rate = images / seconds
        self.timing.append({
            "epoch": epoch, "epoch_seconds": f"{seconds:.3f}", "train_images_per_s": f"{rate:.1f}",
            "eval_seconds": f"{eval_seconds:.3f}",
        })  # fmt: skip
        return {"train_images_per_s": round(rate, 1), "epoch_seconds": round(seconds, 3)}

    def finish(self, summary: dict[str, Any]) -> None:
        """Add the last epoch's throughput to ``summary`` and write ``summary.json``."""
        with (self.run_dir / "timing.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        summary["train_images_per_s"] = float(rows[-1]["train_images_per_s"]) if rows else None
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.close()


def summary_of(
    cfg: TrainConfig, task: Task, state: TrainState, evaluation: Evaluation, bundle: DataBundle, *,
    device: torch.device, place: D.Dist, run_dir: Path, seconds: float,
) -> dict[str, Any]:  # fmt: skip
    """The run's summary: what was trained, the final evaluation, the best epoch, the data's
    unusable files and where it ran."""
    return {
        "run_dir": str(run_dir), "task": cfg.task, "model": cfg.model,
        "attention": cfg.attention or default_attention(cfg.model, registry=task.models),
        "dataset": cfg.dataset,
        "parameters": sum(p.numel() for p in state.evaluated.parameters()), "epochs": cfg.epochs,
        "steps": state.step, **task.summary(evaluation), "best_epoch": state.best["epoch"],
        f"best_test_{task.score}": state.best["score"], "skipped_steps": state.skipped,
        "bad_files": len(bundle.bad_files), "bad_file_list": dict(bundle.bad_files), "device": str(device),
        "processes": place.world, "rank": place.rank, "wall_seconds": round(seconds, 2),
    }  # fmt: skip


def image_size_note(bundle: DataBundle) -> str:
    """One line saying at which size the images are trained and why."""
    why = getattr(bundle, "size_note", "")  # starts with the size: "32x32: every image has this size"
    if why:
        return f"image size {why}"
    h, w = getattr(bundle, "image_size", None) or bundle.input_size
    return f"image size {h}x{w}"


def stopped_summary(signal_name: str, run_dir: Path, state: TrainState, place: D.Dist) -> dict[str, Any]:
    """The summary of a run stopped by a signal (here or on another rank) after its checkpoint."""
    if place.main:
        log.warning(
            "stopped by %s at epoch %d, step %d; checkpoint saved", signal_name, state.epoch + 1, state.step
        )
    return {"run_dir": str(run_dir), "stopped": signal_name, "epoch": state.epoch, "step": state.step,
            "rank": place.rank, "resume": f"visattn train --resume {run_dir}"}  # fmt: skip
