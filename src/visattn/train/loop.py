"""The training loop: one run = one folder holding the resolved config, per-epoch metrics,
checkpoints, an attention figure and a summary.

The library reports progress through a ``Reporter``; the command line supplies a rich
progress bar, everything else gets log lines.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .._io import atomic_write_text
from ..data import DataBundle, load_dataset
from ..explain import save_model_attention
from ..models import create_model
from .checkpoint import save_state, save_weights
from .config import TrainConfig
from .evaluate import EvalResult, evaluate, has_spatial_attention

log = logging.getLogger(__name__)

METRIC_COLUMNS = [
    "epoch",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "pointing_game",
    "last_lr",
    "epoch_seconds",
    "train_images_per_s",
]


class TrainingError(RuntimeError):
    """Training cannot go on (for example, the loss stopped being finite)."""


class Reporter(Protocol):
    """Receives progress; all methods are optional in spirit but must exist."""

    def run_started(self, run_dir: Path, epochs: int, steps_per_epoch: int) -> None: ...
    def step(self, epoch: int, step: int, loss: float, accuracy: float, images_per_s: float) -> None: ...
    def epoch_done(self, metrics: dict[str, Any]) -> None: ...


class LogReporter:
    """Plain log lines, one per epoch."""

    def run_started(self, run_dir: Path, epochs: int, steps_per_epoch: int) -> None:
        log.info("run folder %s: %d epochs of %d steps", run_dir, epochs, steps_per_epoch)

    def step(self, epoch: int, step: int, loss: float, accuracy: float, images_per_s: float) -> None:
        pass

    def epoch_done(self, metrics: dict[str, Any]) -> None:
        log.info(" ".join(f"{k}={v}" for k, v in metrics.items()))


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; an explicit device must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(name, False):
        raise TrainingError(f"device {name!r} is not available on this machine; use --device auto or cpu")
    return torch.device(name)


def new_run_dir(output: Path, model: str) -> Path:
    """A fresh ``output/<timestamp>-<model>`` folder; never reuses an existing one."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    output.mkdir(parents=True, exist_ok=True)
    for n in range(1000):
        run_dir = output / (f"{stamp}-{model}" + (f"-{n}" if n else ""))
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue
    raise TrainingError(f"could not create a new run folder in {output}")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices and kernels only, not on biases and norm scales."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def warmup_cosine(total: int, warmup: int) -> Any:
    """Linear warm-up to the peak rate over ``warmup`` steps, then cosine decay to zero."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def checkpoint_meta(
    config: TrainConfig, bundle: DataBundle, epoch: int, result: EvalResult
) -> dict[str, Any]:
    """What a checkpoint must carry to rebuild and use its model without the run folder."""
    mean, std = bundle.stats
    return {
        "model": config.model,
        "model_kwargs": config.model_kwargs(),
        "num_classes": len(bundle.classes),
        "in_channels": bundle.in_channels,
        "classes": bundle.classes,
        "dataset": bundle.name,
        "input_size": list(bundle.input_size),
        "mean": list(mean),
        "std": list(std),
        "epoch": epoch,
        "test_accuracy": result.accuracy,
    }


def train(config: TrainConfig, *, reporter: Reporter | None = None) -> dict[str, Any]:
    """Run a whole training job described by ``config`` and return its summary.

    Writes ``config.yaml``, ``metrics.csv``, ``last.safetensors`` + ``last.state.pt``,
    ``best.safetensors``, ``attention.png`` (when the model records spatial attention) and
    ``summary.json`` into a new folder under ``config.output``.
    """
    reporter = reporter or LogReporter()
    started = time.perf_counter()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    bundle = load_dataset(config.dataset, data_dir=config.data_dir)
    model = create_model(
        config.model,
        num_classes=len(bundle.classes),
        in_channels=bundle.in_channels,
        **config.model_kwargs(),
    ).to(device)
    loader_rng = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(
        bundle.train,
        batch_size=config.batch_size,
        shuffle=True,
        generator=loader_rng,
        num_workers=config.workers,
        collate_fn=_as_batch,
        drop_last=False,
    )
    steps = len(loader)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr)
    total = steps * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total, round(config.warmup * total))
    )

    run_dir = new_run_dir(config.output, config.model)
    atomic_write_text(run_dir / "config.yaml", config.to_yaml())
    metrics_path = run_dir / "metrics.csv"
    metrics_path.write_text(",".join(METRIC_COLUMNS) + "\n")
    reporter.run_started(run_dir, config.epochs, steps)

    best_acc, best_epoch, result, history = -1.0, 0, None, []
    for epoch in range(1, config.epochs + 1):
        if hasattr(bundle.train, "set_epoch"):
            bundle.train.set_epoch(epoch - 1)
        t0 = time.perf_counter()
        train_loss, train_acc, seen, lr = _train_epoch(
            model, loader, optimizer, scheduler, device, epoch, reporter
        )
        seconds = time.perf_counter() - t0
        result = evaluate(model, bundle.test, num_classes=len(bundle.classes), device=device)
        row = {
            "epoch": epoch,
            "train_loss": round(train_loss, 6),
            "train_accuracy": round(train_acc, 6),
            "test_loss": round(result.loss, 6),
            "test_accuracy": round(result.accuracy, 6),
            "pointing_game": "" if result.pointing is None else round(result.pointing, 6),
            "last_lr": f"{lr:.6g}",
            "epoch_seconds": round(seconds, 3),
            "train_images_per_s": round(seen / seconds, 1),
        }
        with metrics_path.open("a", newline="") as f:
            csv.DictWriter(f, METRIC_COLUMNS).writerow(row)
        history.append(row)
        meta = checkpoint_meta(config, bundle, epoch, result)
        save_weights(run_dir / "last.safetensors", model, meta)
        save_state(
            run_dir / "last.state.pt",
            {
                "epoch": epoch,
                "step": epoch * steps,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "loader_rng": loader_rng.get_state(),
            },
        )
        if result.accuracy > best_acc:
            best_acc, best_epoch = result.accuracy, epoch
            save_weights(run_dir / "best.safetensors", model, meta)
        reporter.epoch_done(row)

    assert result is not None  # epochs >= 1
    figure = None
    if has_spatial_attention(model, bundle.test, device):
        figure = run_dir / "attention.png"
        save_model_attention(model, bundle.test, bundle.classes, figure, device=device)
    summary = {
        "run_dir": str(run_dir),
        "model": config.model,
        "attention": config.attention,
        "dataset": config.dataset,
        "parameters": sum(p.numel() for p in model.parameters()),
        "epochs": config.epochs,
        "test_accuracy": result.accuracy,
        "test_loss": result.loss,
        "pointing_game": result.pointing,
        "per_class_accuracy": dict(zip(bundle.classes, result.per_class, strict=True)),
        "best_epoch": best_epoch,
        "best_test_accuracy": best_acc,
        "train_images_per_s": history[-1]["train_images_per_s"],
        "wall_seconds": round(time.perf_counter() - started, 2),
        "device": str(device),
        "attention_figure": None if figure is None else figure.name,
        "final": asdict(result),
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _as_batch(batch: Any) -> Any:
    """The datasets return whole batches from ``__getitems__``: nothing left to collate."""
    return batch


def _train_epoch(
    model, loader, optimizer, scheduler, device, epoch, reporter
) -> tuple[float, float, int, float]:
    """One pass over ``loader``; returns mean loss, accuracy, images seen and the last lr."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen, t0 = 0, time.perf_counter()
    for step, (x, y) in enumerate(loader, start=1):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"the loss became {loss.item()} at epoch {epoch}, step {step}; lower --lr or check "
                "the data. The last checkpoint of the run folder is the last good one"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(dim=1) == y).sum()
        seen += len(y)
        if step % 10 == 0 or step == len(loader):
            rate = seen / (time.perf_counter() - t0)
            reporter.step(epoch, step, float(loss_sum) / seen, int(correct) / seen, rate)
    return float(loss_sum) / seen, int(correct) / seen, seen, lr
