"""Checkpoint sets of a running ``Trainer``: what goes into them and how a run is restored.

Every process contributes its own RNG states and running metric sums (gathered on the
first process, which alone writes files), so a resumed run -- also under torchrun -- goes on
exactly as if it had never stopped.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .evaluate import EvalResult
from .run_files import find_resumable, prune_snapshots, save_set
from .setup import TrainingError

log = logging.getLogger("visattn.train.loop")


class Checkpointing:
    """Mixed into ``Trainer``: reads and writes the attributes ``_build`` creates."""

    def _meta(self, result: EvalResult | None) -> dict[str, Any]:
        cfg, b = self.config, self.bundle
        return {
            "model": cfg.model, "model_kwargs": cfg.model_kwargs(), "num_classes": len(b.classes),
            "in_channels": b.in_channels, "classes": b.classes, "dataset": b.name,
            "input_size": list(b.input_size), "mean": list(b.stats[0]), "std": list(b.stats[1]),
            "epoch": self.epoch, "test_accuracy": None if result is None else result.accuracy,
        }  # fmt: skip

    def _rank_state(self) -> dict[str, Any]:
        cuda = torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []
        return {
            "rng_cpu": torch.get_rng_state(), "rng_cuda": cuda,
            "train_loss": dict(self.train_loss.metric_state), "train_acc": dict(self.train_acc.metric_state),
        }  # fmt: skip

    def _checkpoint(self, result: EvalResult | None = None) -> None:
        """Save ``last`` (+ a step snapshot); a collective under DDP."""
        ranks = [self._rank_state()]
        if self.place.active:
            ranks = [None] * self.place.world if self.place.main else None
            dist.gather_object(self._rank_state(), ranks, dst=0)
        if not self.place.main:
            return
        state = {
            "step": self.step_count, "epoch": self.epoch, "batch": self.batch, "world": self.place.world,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "ema": None if self.ema is None else self.ema.state_dict(),
            "ranks": ranks, "best": dict(self.best), "skipped": self.skipped,
        }  # fmt: skip
        meta = self._meta(result)
        if self.config.keep:
            save_set(self.run_dir, f"step-{self.step_count:07d}", self.model, meta, state)
            prune_snapshots(self.run_dir, self.config.keep)
        save_set(self.run_dir, "last", self.model, meta, state)

    def _restore(self, path: Path) -> None:
        found, (weights, _meta, state) = find_resumable(self.run_dir, path if path.is_file() else None)
        if state["world"] != self.place.world:
            raise TrainingError(
                f"{found} was written by {state['world']} process(es); resume with the same number"
            )
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        mine = state["ranks"][self.place.rank]
        torch.set_rng_state(mine["rng_cpu"])
        if self.device.type == "cuda" and mine["rng_cuda"]:
            torch.cuda.set_rng_state_all(mine["rng_cuda"])
        for metric, saved in ((self.train_loss, mine["train_loss"]), (self.train_acc, mine["train_acc"])):
            for name, value in saved.items():
                setattr(metric, name, value.to(self.device))
        self.epoch, self.batch, self.step_count = state["epoch"], state["batch"], state["step"]
        self.best, self.skipped = dict(state["best"]), state["skipped"]
        if self.place.main:
            log.info("resuming from %s: epoch %d, step %d", found, self.epoch + 1, self.step_count)
