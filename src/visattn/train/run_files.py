"""The files of a run folder: config, metrics, timings, checkpoint sets and their retention.

A checkpoint set is ``<stem>.safetensors`` (weights; the model description, the step and the
set's stamp in its header) plus ``<stem>.state.pt`` (optimizer, scheduler, scaler, EMA, RNG
states, data position, the same stamp; tensors and plain values only), published together in
one atomic step (``checkpoint_set``). ``last`` is rewritten at every checkpoint, ``best``
when the evaluation improves, and ``step-NNNNNNN`` snapshots are kept for the ``keep`` most
recent checkpoints, so a damaged ``last`` can fall back to a good earlier set.
"""

from __future__ import annotations

import csv
import io
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import append_text, atomic_write_text
from .checkpoint import CheckpointError, check_finite, load_state, read_checkpoint, save_state, save_weights
from .checkpoint_set import STAMP, check_stamps, new_stamp, publish, recover, recover_all

log = logging.getLogger(__name__)

METRIC_COLUMNS = [
    "epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "test_top5",
    "pointing_game", "lr", "skipped_steps",
]  # fmt: skip
TIMING_COLUMNS = ["epoch", "epoch_seconds", "train_images_per_s", "eval_seconds"]


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
    raise CheckpointError(f"could not create a new run folder in {output}")


def latest_run_dir(output: Path) -> Path:
    """The most recent run folder under ``output`` (``--resume last``)."""
    runs = (
        sorted(p for p in Path(output).iterdir() if (p / "config.yaml").is_file())
        if Path(output).is_dir()
        else []
    )
    if not runs:
        raise CheckpointError(f"no run folder to resume in {output}")
    return max(runs, key=lambda p: (p.name[:15], p.stat().st_mtime))


class CsvLog:
    """A CSV file with a fixed header, appended row by row; on resume it is cut back to the
    rows of the epochs the checkpoint has completed, so no row is ever written twice."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path, self.columns = path, columns

    def start(self, completed_epochs: int) -> None:
        rows = []
        if self.path.is_file():
            with self.path.open(newline="") as f:
                # a row cut short by a crash has missing fields: it is dropped with the rest
                rows = [
                    r
                    for r in csv.DictReader(f)
                    if None not in r.values() and r["epoch"].isdigit() and int(r["epoch"]) <= completed_epochs
                ]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buffer.getvalue())

    def append(self, row: dict[str, Any]) -> None:
        buffer = io.StringIO()
        csv.DictWriter(buffer, self.columns, lineterminator="\n").writerow(row)
        append_text(self.path, buffer.getvalue())


def save_set(
    run_dir: Path, stem: str, weights: nn.Module, meta: dict[str, Any], state: dict[str, Any]
) -> None:
    """Write one checkpoint set, ``<stem>.safetensors`` + ``<stem>.state.pt``, published in one
    atomic step: after a crash at any moment both files are from the previous save or both from
    this one (see ``checkpoint_set``). Both carry the set's stamp, which ``load_set`` checks."""
    check_finite(weights.state_dict(), run_dir / f"{stem}.safetensors")
    stamp = new_stamp(state["step"])

    def write(weights_path: Path, state_path: Path) -> None:
        save_state(state_path, {**state, STAMP: stamp})
        save_weights(weights_path, weights, {**meta, "step": state["step"], STAMP: stamp})

    publish(run_dir, stem, write)


def load_set(weights_path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """``(state_dict, meta, training state)`` of a checkpoint set, after finishing a publication
    a crash interrupted; ``CheckpointError`` naming the file if either part is missing,
    damaged, unsafe, or not saved together with the other (stamps or steps differ)."""
    weights_path = Path(weights_path)
    stem = weights_path.name.removesuffix(".safetensors")
    recover(weights_path.parent, stem)
    state_dict, meta = read_checkpoint(weights_path)
    state_path = weights_path.with_name(stem + ".state.pt")
    state = load_state(state_path)
    check_stamps(weights_path, meta.get(STAMP), state_path, state.get(STAMP))
    if state.get("step") != meta.get("step"):
        raise CheckpointError(
            f"{state_path} (step {state.get('step')}) does not belong to {weights_path} "
            f"(step {meta.get('step')})"
        )
    return state_dict, meta, state


def resume_candidates(run_dir: Path, start: Path | None = None) -> list[Path]:
    """Weights files to try, newest first: ``start`` (or ``last``), then step snapshots."""
    first = start or run_dir / "last.safetensors"
    snapshots = sorted(run_dir.glob("step-*.safetensors"), reverse=True)
    return [first, *[p for p in snapshots if p != first]]


def find_resumable(run_dir: Path, start: Path | None = None) -> tuple[Path, Any]:
    """The newest checkpoint set that loads; each refused one is logged with its reason."""
    recover_all(run_dir)  # a set whose publication a crash cut short is finished first
    problems = []
    for path in resume_candidates(run_dir, start):
        try:
            return path, load_set(path)
        except CheckpointError as err:
            log.warning("cannot resume from %s: %s", path, err)
            problems.append(str(err))
    raise CheckpointError(f"no usable checkpoint to resume in {run_dir}: " + "; ".join(problems))


def prune_snapshots(run_dir: Path, keep: int) -> None:
    """Keep the ``keep`` most recent step snapshots."""
    snapshots = sorted(run_dir.glob("step-*.safetensors"), reverse=True)
    for old in snapshots[keep:]:
        old.unlink(missing_ok=True)
        old.with_name(old.name.removesuffix(".safetensors") + ".state.pt").unlink(missing_ok=True)
