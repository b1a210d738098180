"""The training engine: one run = one folder (see ``run_files``), exact resume from any
checkpoint -- also from the middle of an epoch -- signal handling, non-finite-loss policy,
mixed precision, EMA, gradient accumulation and clipping, and DDP under torchrun.

Exactness rests on three things: the data order of epoch e is a pure function of (seed, e)
(DistributedSampler), every augmentation draw is seeded by (seed, epoch, index), and a
checkpoint holds every other source of randomness and every running sum.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric

from .._io import atomic_write_text
from ..data import DataBundle, load_dataset
from ..explain import save_confusion_matrix, save_model_attention
from ..models import create_model, default_attention
from . import distributed as D
from .checkpoint import CheckpointError, save_weights
from .config import TrainConfig
from .ema import WeightEma
from .evaluate import EvalResult, evaluate, has_spatial_attention
from .resume import Checkpointing
from .run_files import (
    METRIC_COLUMNS,
    TIMING_COLUMNS,
    CsvLog,
    new_run_dir,
)
from .schedule import warmup_cosine, warmup_step
from .setup import (
    LogReporter,
    Reporter,
    ResumableSampler,
    TrainingError,
    amp_dtype,
    as_batch,
    param_groups,
    resolve_device,
)

log = logging.getLogger(__name__)


class Trainer(Checkpointing):
    """Builds everything a run needs from ``config`` and runs it (``run``).

    Args:
        config: the validated configuration.
        reporter: progress callbacks for the main process; log lines when ``None``.
        resume: a run folder or one of its weights files to continue from.
    """

    def __init__(
        self, config: TrainConfig, *, reporter: Reporter | None = None, resume: Path | None = None
    ) -> None:
        self.config, self.reporter, self.resume = config, reporter or LogReporter(), resume
        self.stop_signal: int | None = None

    # ----------------------------------------------------------------- set-up
    def _build(self) -> None:
        cfg = self.config
        self.device = resolve_device(cfg.device)
        self.place = D.setup(self.device.type)
        if self.device.type == "cuda" and self.place.active:
            self.device = torch.device("cuda", self.place.local_rank)
        if cfg.deterministic:
            # cuBLAS needs a fixed workspace to be deterministic; it must be set before CUDA
            # starts, so a process-wide variable is the only way (PyTorch documents it).
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=False)
            torch.backends.cudnn.benchmark = False
        torch.manual_seed(cfg.seed)
        self.bundle: DataBundle = load_dataset(cfg.dataset, **cfg.data_kwargs())
        per_step = self.place.world * cfg.grad_accum_steps
        if cfg.batch_size % per_step:
            raise TrainingError(
                f"batch_size {cfg.batch_size} must be a multiple of processes x grad_accum_steps = {per_step}"
            )
        self.micro = cfg.batch_size // per_step
        model = create_model(
            cfg.model, num_classes=len(self.bundle.classes), in_channels=self.bundle.in_channels,
            **cfg.model_kwargs(),
        )  # fmt: skip
        if cfg.sync_bn and self.place.active:
            if self.device.type != "cuda":
                raise TrainingError("--sync-bn needs CUDA: PyTorch's SyncBatchNorm has no CPU kernels")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.ema = WeightEma(self.model, cfg.model_ema_decay) if cfg.model_ema_decay else None
        wrapped: nn.Module = self.model
        if self.place.active:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DistributedDataParallel(self.model, device_ids=ids, gradient_as_bucket_view=True)
        self.forward = torch.compile(wrapped) if cfg.compile else wrapped
        self.ddp = wrapped if self.place.active else None

        self.sampler = ResumableSampler(
            self.bundle.train,
            num_replicas=self.place.world,
            rank=self.place.rank,
            shuffle=True,
            seed=cfg.seed,
        )
        # Incomplete last batches are dropped: a batch of one would break BatchNorm on pooled
        # features (SE, SK, BAM ...), and every step then has the same size on every process.
        self.batches = self.sampler.num_samples // self.micro
        if self.batches == 0:
            raise TrainingError(
                f"batch_size {cfg.batch_size} is larger than the training split "
                f"({len(self.bundle.train)} images over {self.place.world} process(es))"
            )
        self.steps = math.ceil(self.batches / cfg.grad_accum_steps)
        total, warm = self.steps * cfg.epochs, round(cfg.warmup * self.steps * cfg.epochs)
        groups = param_groups(self.model, cfg.weight_decay)
        if cfg.opt == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
        factor = (
            warmup_cosine(total, warm) if cfg.sched == "cosine"
            else warmup_step(self.steps, warm, cfg.step_every, cfg.step_gamma)
        )  # fmt: skip
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.amp = amp_dtype(cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.train_loss = MeanMetric().to(self.device)
        self.train_acc = MeanMetric().to(self.device)
        self.epoch, self.batch, self.step_count, self.skipped = 0, 0, 0, 0
        self.best = {"accuracy": -1.0, "epoch": 0}

    def _autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision if enabled; with --deterministic on CUDA, also PyTorch's math
        attention backend, since the fused kernels' backward passes accumulate atomically."""
        stack = contextlib.ExitStack()
        if self.amp is not None:
            stack.enter_context(torch.autocast(self.device.type, dtype=self.amp))
        if self.config.deterministic and self.device.type == "cuda":
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        return stack

    # ---------------------------------------------------------------- signals
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stop_signal is not None:  # asked twice: stop now
            raise KeyboardInterrupt
        self.stop_signal = signum
        log.warning(
            "%s received: finishing the current step, then saving a checkpoint", signal.Signals(signum).name
        )

    @contextlib.contextmanager
    def _signals(self):
        try:
            old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: leave signals alone
            yield
            return
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    # ----------------------------------------------------------------- running
    def run(self) -> dict[str, Any]:
        """Train to the last epoch (or until a signal) and return the run's summary."""
        started = time.perf_counter()
        self._build()
        try:
            with self._signals():
                return self._run(started)
        finally:
            D.teardown(self.place)

    def _prepare_run_dir(self) -> None:
        cfg = self.config
        if self.resume is not None:
            path = Path(self.resume)
            self.run_dir = path if path.is_dir() else path.parent
            self._restore(path)
        else:
            made = str(new_run_dir(cfg.output, cfg.model)) if self.place.main else None
            self.run_dir = Path(D.broadcast(self.place, made))
        self.metrics = CsvLog(self.run_dir / "metrics.csv", METRIC_COLUMNS)
        self.timing = CsvLog(self.run_dir / "timing.csv", TIMING_COLUMNS)
        if self.place.main:
            if self.resume is None:
                atomic_write_text(self.run_dir / "config.yaml", cfg.to_yaml())
            self.metrics.start(self.epoch)
            self.timing.start(self.epoch)
        self.tensorboard = None
        if cfg.tensorboard and self.place.main:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"))

    def _run(self, started: float) -> dict[str, Any]:
        cfg = self.config
        self._prepare_run_dir()
        if self.place.main:
            self.reporter.run_started(
                self.run_dir, cfg.epochs, self.steps, self.epoch * self.steps + self.batch
            )
        result = None
        while self.epoch < cfg.epochs:
            t0 = time.perf_counter()
            seen = self._train_epoch()
            if self.stop_signal is not None:
                return self._stopped()
            seconds = time.perf_counter() - t0
            t1 = time.perf_counter()
            result = self._evaluate()
            self.epoch, self.batch = self.epoch + 1, 0
            self._end_epoch(result, seconds, seen, time.perf_counter() - t1)
        if result is None:  # resumed a finished run
            result = self._evaluate()
        return self._finish(result, started)

    def _evaluate(self) -> EvalResult:
        model = self.ema.module if self.ema is not None else self.model
        return evaluate(
            model, self.bundle.test, num_classes=len(self.bundle.classes), device=self.device,
            rank=self.place.rank, world=self.place.world, channels_last=self.config.channels_last,
        )  # fmt: skip

    def _train_epoch(self) -> int:
        """Run the rest of the current epoch; returns the images this process trained on."""
        cfg = self.config
        self.sampler.set_epoch(self.epoch)
        self.sampler.skip = self.batch * self.micro
        if hasattr(self.bundle.train, "set_epoch"):
            self.bundle.train.set_epoch(self.epoch)
        loader = DataLoader(
            self.bundle.train, batch_size=self.micro, sampler=self.sampler, num_workers=cfg.workers,
            collate_fn=as_batch, pin_memory=self.device.type == "cuda", drop_last=True,
            generator=torch.Generator().manual_seed(cfg.seed),
        )  # fmt: skip
        self.model.train()
        seen, t0 = 0, time.perf_counter()
        batches = iter(loader)
        while True:
            micro_batches = [b for _, b in zip(range(cfg.grad_accum_steps), batches, strict=False)]
            if not micro_batches:
                break
            seen += self._step(micro_batches)
            self.batch += len(micro_batches)
            if self.place.main and (self.step_count % 10 == 0 or self.batch >= self.batches):
                rate = seen / (time.perf_counter() - t0) * self.place.world
                step_in_epoch = math.ceil(self.batch / cfg.grad_accum_steps)
                self.reporter.step(self.epoch + 1, step_in_epoch, self._local_mean(self.train_loss),
                                   self._local_mean(self.train_acc), rate)  # fmt: skip
            stop = D.any_rank(self.place, self.stop_signal is not None, self.device)
            if stop:
                self.stop_signal = self.stop_signal or signal.SIGTERM
                self._checkpoint()
                return seen
            if cfg.checkpoint_every and self.step_count % cfg.checkpoint_every == 0:
                self._checkpoint()
        return seen

    @staticmethod
    def _local_mean(metric: MeanMetric) -> float:
        """This process's running mean, without the collective that ``compute`` runs."""
        return float(metric.mean_value / metric.weight.clamp_min(1))

    def _step(self, micro_batches: list[Any]) -> int:
        """One optimizer step over ``micro_batches``; returns the images used."""
        cfg = self.config
        seen, nonfinite = 0, False
        for i, (x, y) in enumerate(micro_batches):
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            y = y.to(self.device, non_blocking=True)
            sync = self.ddp is None or i == len(micro_batches) - 1
            with contextlib.nullcontext() if sync else self.ddp.no_sync(), self._autocast():
                logits = self.forward(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.smoothing)
            nonfinite |= not bool(torch.isfinite(loss))
            self.scaler.scale(loss / len(micro_batches)).backward()
            self.train_loss.update(loss.detach(), weight=len(y))
            self.train_acc.update((logits.detach().argmax(dim=1) == y).float().mean(), weight=len(y))
            seen += len(y)
        if D.any_rank(self.place, nonfinite, self.device):
            self.optimizer.zero_grad(set_to_none=True)
            if cfg.nan == "stop":
                raise TrainingError(
                    f"the loss is not finite at epoch {self.epoch + 1}, step {self.step_count + 1}; stopping "
                    f"(--nan skip skips such steps). The last checkpoint in {self.run_dir} holds the last "
                    "good weights"
                )
            self.skipped += 1
            log.warning("non-finite loss at step %d: step skipped", self.step_count + 1)
        else:
            if cfg.clip_grad is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update(self.model)
        self.scheduler.step()
        self.step_count += 1
        return seen

    def _end_epoch(self, result: EvalResult, seconds: float, seen: int, eval_seconds: float) -> None:
        loss, acc = float(self.train_loss.compute()), float(self.train_acc.compute())  # synced over ranks
        self.train_loss.reset()
        self.train_acc.reset()
        improved = result.accuracy > self.best["accuracy"]
        if improved:
            self.best = {"accuracy": result.accuracy, "epoch": self.epoch}
        self._checkpoint(result)
        if not self.place.main:
            return
        if improved:
            best_weights = self.ema.module if self.ema is not None else self.model
            save_weights(
                self.run_dir / "best.safetensors",
                best_weights,
                {**self._meta(result), "step": self.step_count},
            )
        row = {
            "epoch": self.epoch, "step": self.step_count, "train_loss": f"{loss:.6f}",
            "train_accuracy": f"{acc:.6f}", "test_loss": f"{result.loss:.6f}",
            "test_accuracy": f"{result.accuracy:.6f}",
            "test_top5": "" if result.top5 is None else f"{result.top5:.6f}",
            "pointing_game": "" if result.pointing is None else f"{result.pointing:.6f}",
            "lr": f"{self.scheduler.get_last_lr()[0]:.6g}", "skipped_steps": self.skipped,
        }  # fmt: skip
        self.metrics.append(row)
        rate = seen * self.place.world / seconds
        timing = {"epoch": self.epoch, "epoch_seconds": f"{seconds:.3f}", "train_images_per_s": f"{rate:.1f}"}
        self.timing.append({**timing, "eval_seconds": f"{eval_seconds:.3f}"})
        if self.tensorboard is not None:
            for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
                self.tensorboard.add_scalar(key, float(row[key]), self.epoch)
        self.reporter.epoch_done(
            {**row, "train_images_per_s": round(rate, 1), "epoch_seconds": round(seconds, 3)}
        )

    def _stopped(self) -> dict[str, Any]:
        name = signal.Signals(self.stop_signal).name
        if self.place.main:
            log.warning(
                "stopped by %s at epoch %d, step %d; checkpoint saved", name, self.epoch + 1, self.step_count
            )
        return {"run_dir": str(self.run_dir), "stopped": name, "epoch": self.epoch, "step": self.step_count,
                "rank": self.place.rank,
                "resume": f"visattn train --resume {self.run_dir}"}  # fmt: skip

    def _finish(self, result: EvalResult, started: float) -> dict[str, Any]:
        model = self.ema.module if self.ema is not None else self.model
        attention = self.config.attention or default_attention(self.config.model)
        summary = {
            "run_dir": str(self.run_dir), "model": self.config.model, "attention": attention,
            "dataset": self.config.dataset, "parameters": sum(p.numel() for p in model.parameters()),
            "epochs": self.config.epochs, "steps": self.step_count, "test_accuracy": result.accuracy,
            "test_top5": result.top5, "test_loss": result.loss, "pointing_game": result.pointing,
            "per_class_accuracy": dict(zip(self.bundle.classes, result.per_class, strict=True)),
            "best_epoch": self.best["epoch"], "best_test_accuracy": self.best["accuracy"],
            "skipped_steps": self.skipped, "bad_files": len(self.bundle.bad_files),
            "bad_file_list": dict(self.bundle.bad_files), "device": str(self.device),
            "processes": self.place.world, "rank": self.place.rank,
            "wall_seconds": round(time.perf_counter() - started, 2),
            "confusion": result.confusion,
        }  # fmt: skip
        if not self.place.main:
            return summary
        save_confusion_matrix(self.run_dir / "confusion.png", result.confusion, self.bundle.classes)
        if has_spatial_attention(model, self.bundle.test, self.device):
            save_model_attention(model, self.bundle.test, self.bundle.classes, self.run_dir / "attention.png",
                                 device=self.device)  # fmt: skip
            summary["attention_figure"] = "attention.png"
        rows = list(csv.DictReader((self.run_dir / "timing.csv").open()))
        summary["train_images_per_s"] = float(rows[-1]["train_images_per_s"]) if rows else None
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.close()
        return summary


def train(
    config: TrainConfig, *, reporter: Reporter | None = None, resume: Path | None = None
) -> dict[str, Any]:
    """Run the training job described by ``config`` (continuing ``resume`` if given) and
    return its summary; see ``Trainer``."""
    return Trainer(config, reporter=reporter, resume=resume).run()


__all__ = [
    "CheckpointError",
    "LogReporter",
    "Reporter",
    "Trainer",
    "TrainingError",
    "resolve_device",
    "train",
]
