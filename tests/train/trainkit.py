"""Tiny, fast training set-ups and process helpers shared by the engine tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

TINY = """\
dataset: mnist-sample
model_options: {widths: [8, 16], strides: [2, 2]}
attention_options: {heads: 2}
epochs: 2
batch_size: 100
lr: 0.005
"""


ENV = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}


def run_visattn(*args: object, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m visattn ...`` in a fresh process and wait for it."""
    cmd = [sys.executable, "-m", "visattn", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


def start_visattn(*args: object) -> subprocess.Popen:
    """Start ``python -m visattn ...`` without waiting."""
    cmd = [sys.executable, "-m", "visattn", *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def only_run(output: Path) -> Path:
    """The single run folder under ``output``."""
    (run_dir,) = [p for p in output.iterdir() if p.is_dir()]
    return run_dir


def wait_for_mid_epoch(proc: subprocess.Popen, runs: Path, *, epoch: int = 1) -> None:
    """Wait until the run under ``runs`` has checkpointed inside epoch ``epoch + 1`` (0-based
    ``epoch`` completed, some batches done); fail if the process ends first."""
    from visattn.train.checkpoint import CheckpointError, load_state

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(runs.glob("*/last.state.pt")) if runs.exists() else []
        if found:
            try:
                state = load_state(found[0])
            except CheckpointError:
                state = {}
            if state.get("epoch") == epoch and state.get("batch", 0) > 0:
                return
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
