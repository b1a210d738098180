"""Pieces the training engine is assembled from: device and precision choice, optimizer
parameter groups, the resumable sampler, and the progress-reporting protocol."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data.distributed import DistributedSampler

log = logging.getLogger("visattn.train.loop")


class TrainingError(RuntimeError):
    """Training cannot go on (for example, the loss stopped being finite)."""


class Reporter(Protocol):
    """Receives progress on the main process."""

    def run_started(self, run_dir: Path, epochs: int, steps_per_epoch: int, start: int) -> None: ...
    def step(self, epoch: int, step: int, loss: float, accuracy: float, images_per_s: float) -> None: ...
    def epoch_done(self, metrics: dict[str, Any]) -> None: ...


class LogReporter:
    """Plain log lines, one per epoch."""

    def run_started(self, run_dir: Path, epochs: int, steps_per_epoch: int, start: int) -> None:
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


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: ``auto`` is bf16 on CUDA where supported (fp16 otherwise) and off
    on CPU and MPS, where it must be asked for."""
    if setting == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[setting]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices and kernels only, not on biases and norm scales."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start part-way into an epoch (``skip`` indices)."""

    skip = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip :])

    def __len__(self) -> int:
        return self.num_samples - self.skip


def as_batch(batch: Any) -> Any:
    """The datasets return whole batches from ``__getitems__``: nothing left to collate."""
    return batch
