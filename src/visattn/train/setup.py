"""Pieces the training loop is assembled from: device, process group and determinism, the
model's wrappers (DDP, compile), optimizer and schedule, precision, the resumable sampler, and
the progress-reporting protocol. Each is a plain function of the configuration."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from ..memory_format import to_memory_format
from . import distributed as D
from .config import TrainConfig
from .schedule import warmup_cosine, warmup_step

log = logging.getLogger("visattn.train.loop")


class TrainingError(RuntimeError):
    """Training cannot go on (for example, the loss stopped being finite)."""


class Reporter(Protocol):
    """Receives progress on the main process."""

    def run_started(self, run_dir: Path, epochs: int, steps_per_epoch: int, start: int) -> None: ...
    def message(self, text: str) -> None: ...
    def step(self, epoch: int, step: int, values: dict[str, float], images_per_s: float) -> None: ...
    def epoch_done(self, metrics: dict[str, Any]) -> None: ...


class LogReporter:
    """Plain log lines, one per epoch."""

    def run_started(self, run_dir: Path, epochs: int, steps_per_epoch: int, start: int) -> None:
        log.info("run folder %s: %d epochs of %d steps", run_dir, epochs, steps_per_epoch)

    def message(self, text: str) -> None:
        log.info(text)

    def step(self, epoch: int, step: int, values: dict[str, float], images_per_s: float) -> None:
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


def join_job(device_name: str) -> tuple[torch.device, D.Dist]:
    """This process's device and place in the job; under torchrun each CUDA process takes
    the GPU of its local rank."""
    device = resolve_device(device_name)
    place = D.setup(device.type)
    if device.type == "cuda" and place.active:
        device = torch.device("cuda", place.local_rank)
    return device, place


def make_deterministic(cfg: TrainConfig) -> None:
    """Seed the global generator; with ``deterministic``, also ask for deterministic kernels."""
    if cfg.deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; it must be set before CUDA
        # starts, so a process-wide variable is the only way (PyTorch documents it).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
    torch.manual_seed(cfg.seed)


def micro_batch(cfg: TrainConfig, world: int) -> int:
    """Images per forward pass on one process."""
    per_step = world * cfg.grad_accum_steps
    if cfg.batch_size % per_step:
        raise TrainingError(
            f"batch_size {cfg.batch_size} must be a multiple of processes x grad_accum_steps = {per_step}"
        )
    return cfg.batch_size // per_step


def prepare_model(
    model: nn.Module, cfg: TrainConfig, place: D.Dist, device: torch.device
) -> tuple[nn.Module, nn.Module, DistributedDataParallel | None]:
    """``(model on the device, the callable that trains it, its DDP wrapper or None)``: the
    model with SyncBatchNorm if asked, wrapped in DDP under torchrun, then compiled if asked."""
    if cfg.sync_bn and place.active:
        if device.type != "cuda":
            raise TrainingError("--sync-bn needs CUDA: PyTorch's SyncBatchNorm has no CPU kernels")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = to_memory_format(model, memory_format(cfg), device)
    ddp = None
    if place.active:
        ids = [device.index] if device.type == "cuda" else None
        ddp = DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)
    wrapped = ddp if ddp is not None else model
    return model, torch.compile(wrapped) if cfg.compile else wrapped, ddp


def memory_format(cfg: TrainConfig) -> torch.memory_format:
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.opt == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    total, warm = steps_per_epoch * cfg.epochs, round(cfg.warmup * steps_per_epoch * cfg.epochs)
    factor = (
        warmup_cosine(total, warm) if cfg.sched == "cosine"
        else warmup_step(steps_per_epoch, warm, cfg.step_every, cfg.step_gamma)
    )  # fmt: skip
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def steps_per_epoch(batches: int, grad_accum_steps: int) -> int:
    return math.ceil(batches / grad_accum_steps)


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: ``auto`` is bf16 on CUDA where supported (fp16 otherwise) and off
    on CPU and MPS, where it must be asked for."""
    if setting == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[setting]


def autocast(amp: torch.dtype | None, device: torch.device, deterministic: bool) -> contextlib.ExitStack:
    """Mixed precision if enabled; with ``deterministic`` on CUDA, also PyTorch's math
    attention backend, since the fused kernels' backward passes accumulate atomically."""
    stack = contextlib.ExitStack()
    if amp is not None:
        stack.enter_context(torch.autocast(device.type, dtype=amp))
    if deterministic and device.type == "cuda":
        stack.enter_context(sdpa_kernel(SDPBackend.MATH))
    return stack


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
