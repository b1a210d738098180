"""The training loop, top to bottom: one run = one folder (see ``run_files``), exact resume
from any checkpoint -- also from the middle of an epoch -- signal handling, non-finite-loss
policy, mixed precision, EMA, gradient accumulation and clipping, and DDP under torchrun.

The loop knows what it trains only through the task (``visattn.tasks``): what a batch is,
the loss, the evaluation and the figures. Exactness rests on three things: the data order of
epoch e is a pure function of (seed, e) (DistributedSampler), every augmentation draw is
seeded by (seed, epoch, index), and a checkpoint holds every other source of randomness and
every running sum.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric

from ..models import resolved_options
from ..report import write_run_report
from ..tasks import TASKS, Evaluation, Task
from . import distributed as D
from .checkpoint import CheckpointError
from .config import TrainConfig
from .ema import WeightEma
from .record import RunRecord, image_size_note, stopped_summary, summary_of
from .resume import TrainState, load_checkpoint, restore, save_checkpoint
from .run_files import new_run_dir
from .setup import (
    LogReporter,
    Reporter,
    ResumableSampler,
    TrainingError,
    amp_dtype,
    autocast,
    join_job,
    make_deterministic,
    make_optimizer,
    make_scheduler,
    memory_format,
    micro_batch,
    prepare_model,
    resolve_device,
    steps_per_epoch,
)
from .signals import StopSignals

log = logging.getLogger(__name__)


def train(
    config: TrainConfig,
    *,
    reporter: Reporter | None = None,
    resume: Path | None = None,
    fallback: bool = False,
    allow_device_change: bool = False,
) -> dict[str, Any]:
    """Run the training job described by ``config`` and return its summary.

    Args:
        config: the validated configuration.
        reporter: progress callbacks for the main process; log lines when ``None``.
        resume: a run folder (its ``last`` checkpoint) or one weights file to continue from.
        fallback: if the checkpoint named by ``resume`` does not load, continue from the
            newest older snapshot of the run that does (``--resume last``), and say so.
        allow_device_change: continue a checkpoint trained on another device type.

    Example:
        >>> summary = train(TrainConfig(dataset="mnist-sample", epochs=1))  # doctest: +SKIP
    """
    cfg, reporter, started = config, reporter or LogReporter(), time.perf_counter()
    with contextlib.ExitStack() as cleanup:
        device, place = join_job(cfg.device)
        cleanup.callback(D.teardown, place)
        stop = cleanup.enter_context(StopSignals())
        say = reporter.message if place.main else log.debug

        # Data, task and model, in a fixed order so that the seed alone decides them.
        make_deterministic(cfg)
        kind = TASKS.get(cfg.task)
        bundle = kind.load_data(cfg.dataset, **cfg.data_kwargs())
        task: Task = kind.from_config(bundle, cfg)
        micro = micro_batch(cfg, place.world)
        options = task.model_options(cfg.model, cfg.model_kwargs())
        model, forward, ddp = prepare_model(task.build_model(cfg.model, options), cfg, place, device)
        ema = WeightEma(model, cfg.model_ema_decay) if cfg.model_ema_decay else None

        # Data order; incomplete last batches are dropped: a batch of one would break
        # BatchNorm on pooled features (SE, SK, BAM ...), and every step then has the same
        # size on every process.
        sampler = ResumableSampler(bundle.train, num_replicas=place.world, rank=place.rank, shuffle=True,
                                   seed=cfg.seed)  # fmt: skip
        batches = sampler.num_samples // micro
        if batches == 0:
            raise TrainingError(
                f"batch_size {cfg.batch_size} is larger than the training split "
                f"({len(bundle.train)} images over {place.world} process(es))"
            )
        steps = steps_per_epoch(batches, cfg.grad_accum_steps)

        # Optimisation and precision; every learning object and counter lives in ``state``.
        optimizer = make_optimizer(cfg, model)
        amp = amp_dtype(cfg.amp, device)
        state = TrainState(
            model=model, optimizer=optimizer, scheduler=make_scheduler(cfg, optimizer, steps),
            scaler=torch.amp.GradScaler(device.type, enabled=amp == torch.float16), ema=ema,
            running={name: MeanMetric().to(device) for name in task.train_metrics},
        )  # fmt: skip

        # The run folder: a new one, or the resumed run's with the state restored.
        if resume is not None:
            found, loaded = load_checkpoint(Path(resume), fallback=fallback, say=say)
            run_dir = found.parent
            restore(state, loaded, source=found, place=place, device=device,
                    allow_device_change=allow_device_change)  # fmt: skip
        else:
            run_dir = Path(
                D.broadcast(place, str(new_run_dir(cfg.output, cfg.model)) if place.main else None)
            )
        record = RunRecord(run_dir, cfg, task, place, completed=state.epoch, new=resume is None)
        # Every option at its value now, defaults included: a later default cannot change it.
        resolved = resolved_options(cfg.model, options, registry=task.models)
        meta = {"model": cfg.model, "model_kwargs": resolved, **task.describe()}

        def checkpoint(score: float | None = None) -> None:
            full = {**meta, "epoch": state.epoch, f"test_{task.score}": score}
            save_checkpoint(state, run_dir=run_dir, place=place, device=device, keep=cfg.keep, meta=full)

        def evaluate() -> Evaluation:
            return task.evaluate(state.evaluated, device=device, rank=place.rank, world=place.world,
                                 channels_last=cfg.channels_last)  # fmt: skip

        if place.main:
            say(image_size_note(bundle))
            reporter.run_started(run_dir, cfg.epochs, steps, state.epoch * steps + state.batch)

        evaluation = None
        while state.epoch < cfg.epochs:
            # One epoch, from the saved position on.
            t0 = time.perf_counter()
            sampler.set_epoch(state.epoch)
            sampler.skip = state.batch * micro
            if hasattr(bundle.train, "set_epoch"):
                bundle.train.set_epoch(state.epoch)
            loader = DataLoader(
                bundle.train, batch_size=micro, sampler=sampler, num_workers=cfg.workers,
                collate_fn=task.collate, pin_memory=device.type == "cuda", drop_last=True,
                generator=torch.Generator().manual_seed(cfg.seed),
            )  # fmt: skip
            model.train()
            seen, stream = 0, iter(loader)
            while micro_batches := list(itertools.islice(stream, cfg.grad_accum_steps)):
                seen += _step(micro_batches, state, task=task, forward=forward, ddp=ddp, cfg=cfg,
                              amp=amp, place=place, device=device, run_dir=run_dir)  # fmt: skip
                state.batch += len(micro_batches)
                if place.main and (state.step % 10 == 0 or state.batch >= batches):
                    rate = seen / (time.perf_counter() - t0) * place.world
                    values = {name: _local_mean(m) for name, m in state.running.items()}
                    reporter.step(state.epoch + 1, -(-state.batch // cfg.grad_accum_steps), values, rate)
                if D.any_rank(place, stop.received is not None, device):
                    checkpoint()
                    return stopped_summary(stop.name, run_dir, state, place)
                if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                    checkpoint()
            seconds, t1 = time.perf_counter() - t0, time.perf_counter()

            # Evaluate, keep the best weights, write the epoch's rows.
            evaluation = evaluate()
            state.epoch, state.batch = state.epoch + 1, 0
            train_means = {name: float(m.compute()) for name, m in state.running.items()}  # over ranks
            for metric in state.running.values():
                metric.reset()
            for warning in task.epoch_warnings(train_means, evaluation):
                log.warning("epoch %d: %s", state.epoch, warning)
            improved = evaluation.score > state.best["score"]
            if improved:
                state.best = {"score": evaluation.score, "epoch": state.epoch}
            checkpoint(evaluation.score)
            if place.main:
                if improved:
                    record.save_best(state.evaluated, {**meta, "epoch": state.epoch, "step": state.step,
                                                       f"test_{task.score}": evaluation.score})  # fmt: skip
                row = record.epoch_row(state, train_means, evaluation)
                extra = record.epoch_timing(
                    state.epoch, seen * place.world, seconds, time.perf_counter() - t1
                )
                reporter.epoch_done({**row, **extra})

        if evaluation is None:  # resumed a finished run: evaluate its weights once more
            evaluation = evaluate()
        summary = summary_of(cfg, task, state, evaluation, bundle, device=device, place=place,
                             run_dir=run_dir, seconds=time.perf_counter() - started)  # fmt: skip
        if place.main:
            summary.update(task.write_figures(state.evaluated, evaluation, run_dir, device=device))
            record.finish(summary)
            summary["report"] = write_run_report(run_dir, test=bundle.test)  # last; never raises
        return summary


def _step(
    micro_batches: list[Any], state: TrainState, *, task: Task, forward: nn.Module,
    ddp: DistributedDataParallel | None, cfg: TrainConfig, amp: torch.dtype | None, place: D.Dist,
    device: torch.device, run_dir: Path,
) -> int:  # fmt: skip
    """One optimizer step over ``micro_batches``; returns the samples used. Under DDP the
    gradients are averaged over ranks on the last micro-batch only."""
    layout = memory_format(cfg)
    seen, nonfinite = 0, False
    for i, raw in enumerate(micro_batches):
        batch = task.to_device(raw, device, layout)
        sync = ddp is None or i == len(micro_batches) - 1
        with contextlib.nullcontext() if sync else ddp.no_sync(), autocast(amp, device, cfg.deterministic):
            out = task.training_loss(forward, batch)
        nonfinite |= not bool(torch.isfinite(out.loss))
        state.scaler.scale(out.loss / len(micro_batches)).backward()
        for name, value in out.values.items():
            state.running[name].update(value, weight=out.count)
        seen += out.count
    if D.any_rank(place, nonfinite, device):
        state.optimizer.zero_grad(set_to_none=True)
        if cfg.nan == "stop":
            raise TrainingError(
                f"the loss is not finite at epoch {state.epoch + 1}, step {state.step + 1}; stopping "
                f"(--nan skip skips such steps). The last checkpoint in {run_dir} holds the last good weights"
            )
        state.skipped += 1
        log.warning("non-finite loss at step %d: step skipped", state.step + 1)
    else:
        if cfg.clip_grad is not None:
            state.scaler.unscale_(state.optimizer)
            nn.utils.clip_grad_norm_(state.model.parameters(), cfg.clip_grad)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.optimizer.zero_grad(set_to_none=True)
        if state.ema is not None:
            state.ema.update(state.model)
    state.scheduler.step()
    state.step += 1
    return seen


def _local_mean(metric: MeanMetric) -> float:
    """This process's running mean, without the collective that ``compute`` runs."""
    return float(metric.mean_value / metric.weight.clamp_min(1))


__all__ = ["CheckpointError", "LogReporter", "Reporter", "TrainingError", "resolve_device", "train"]
