"""What a checkpoint set holds and how a run is restored from one.

``TrainState`` is every object that learns and every number that says where the run stands.
Every process contributes its own RNG states and running metric sums (gathered on the first
process, which alone writes files), so a resumed run -- also under torchrun -- goes on exactly
as if it had never stopped.

Resume rules: a named checkpoint (a weights file or a run folder's ``last``) is loaded as it
is or not at all; only ``fallback`` (``--resume last``) may go back to an older step snapshot,
and it says so. A checkpoint written on another device type is refused unless
``allow_device_change``: the random streams and kernels differ, so the run would no longer
continue exactly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torchmetrics import MeanMetric

from . import distributed as D
from .checkpoint import CheckpointError
from .ema import WeightEma
from .run_files import find_resumable, load_set, prune_snapshots, resume_candidates, save_set
from .setup import TrainingError

log = logging.getLogger("visattn.train.loop")


@dataclass
class TrainState:
    """The learning objects of a run and its position: epoch, micro-batch within the epoch
    (``batch``), optimizer steps, skipped steps and the best evaluation so far."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: WeightEma | None
    running: dict[str, MeanMetric]
    epoch: int = 0
    batch: int = 0
    step: int = 0
    skipped: int = 0
    best: dict[str, float] = field(default_factory=lambda: {"score": -math.inf, "epoch": 0})

    @property
    def evaluated(self) -> nn.Module:
        """The weights that are evaluated and kept as ``best``: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model


def _rank_state(state: TrainState, device: torch.device) -> dict[str, Any]:
    cuda = torch.cuda.get_rng_state_all() if device.type == "cuda" else []
    running = {name: dict(metric.metric_state) for name, metric in state.running.items()}
    return {"rng_cpu": torch.get_rng_state(), "rng_cuda": cuda, "running": running}


def save_checkpoint(
    state: TrainState, *, run_dir: Path, place: D.Dist, device: torch.device, keep: int, meta: dict[str, Any]
) -> None:
    """Save ``last`` (+ a step snapshot when ``keep``); a collective under DDP."""
    ranks = [_rank_state(state, device)]
    if place.active:
        ranks = [None] * place.world if place.main else None
        dist.gather_object(_rank_state(state, device), ranks, dst=0)
    if not place.main:
        return
    saved = {
        "step": state.step, "epoch": state.epoch, "batch": state.batch, "world": place.world,
        "device": device.type, "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(), "scaler": state.scaler.state_dict(),
        "ema": None if state.ema is None else state.ema.state_dict(), "ranks": ranks,
        "best": dict(state.best), "skipped": state.skipped,
    }  # fmt: skip
    if keep:
        save_set(run_dir, f"step-{state.step:07d}", state.model, meta, saved)
        prune_snapshots(run_dir, keep)
    save_set(run_dir, "last", state.model, meta, saved)


def load_checkpoint(
    start: Path, *, fallback: bool, say: Callable[[str], None]
) -> tuple[Path, tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]]:
    """The checkpoint set to resume from ``start`` (a weights file, or a run folder for its
    ``last``): ``(path, (weights, meta, training state))``.

    Raises ``CheckpointError`` with the reason when it does not load, unless ``fallback``
    allows an older snapshot of the same run, in which case ``say`` tells which one is used.
    """
    run_dir = start if start.is_dir() else start.parent
    first = resume_candidates(run_dir, None if start.is_dir() else start)[0]
    try:
        return first, load_set(first)
    except CheckpointError as err:
        if not fallback:
            raise
        reason = str(err)
    found, loaded = find_resumable(run_dir, first)
    say(f"{first} cannot be used ({reason}); resuming from the older snapshot {found} instead")
    return found, loaded


def restore(
    state: TrainState,
    loaded: tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]],
    *,
    source: Path,
    place: D.Dist,
    device: torch.device,
    allow_device_change: bool,
) -> None:
    """Put a loaded checkpoint set into ``state``; refuses another process count and, unless
    allowed, another device type."""
    weights, _meta, saved = loaded
    if saved["world"] != place.world:
        raise TrainingError(
            f"{source} was written by {saved['world']} process(es); resume with the same number"
        )
    trained_on = saved.get("device")
    if trained_on is not None and trained_on != device.type and not allow_device_change:
        raise TrainingError(
            f"{source} was trained on {trained_on}, this run would go on on {device.type}: the random "
            "streams and kernels differ, so it would not continue exactly; pass --device "
            f"{trained_on}, or --allow-device-change to go on anyway"
        )
    state.model.load_state_dict(weights)
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    state.scaler.load_state_dict(saved["scaler"])
    if state.ema is not None and saved["ema"] is not None:
        state.ema.load_state_dict(saved["ema"])
    mine = saved["ranks"][place.rank]
    torch.set_rng_state(mine["rng_cpu"])
    if device.type == "cuda" and mine["rng_cuda"]:
        torch.cuda.set_rng_state_all(mine["rng_cuda"])
    for name, metric in state.running.items():
        for key, value in mine["running"][name].items():
            setattr(metric, key, value.to(device))
    state.epoch, state.batch, state.step = saved["epoch"], saved["batch"], saved["step"]
    state.best, state.skipped = dict(saved["best"]), saved["skipped"]
    if place.main:
        log.info("resuming from %s: epoch %d, step %d", source, state.epoch + 1, state.step)
