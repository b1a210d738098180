"""Crash-safe, exact resume: SIGKILL and SIGTERM in the middle of an epoch, truncated and
malicious checkpoint files."""

from __future__ import annotations

import os
import pickle
import random
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainkit import TINY, only_run, run_visattn, start_visattn, wait_for_mid_epoch

from visattn.train import load_model
from visattn.train.checkpoint import CheckpointError, load_state
from visattn.train.config import resolve_config
from visattn.train.loop import LogReporter, train

pytestmark = pytest.mark.slow
FLAGS = ["--epochs", "3", "--checkpoint-every", "5"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run: 3 epochs of 40 steps."""
    root = tmp_path_factory.mktemp("reference")
    (root / "tiny.yaml").write_text(TINY)
    done = run_visattn("train", "--config", root / "tiny.yaml", "--output", root / "runs", *FLAGS)
    assert done.returncode == 0, done.stderr
    return only_run(root / "runs")


def interrupt(tmp_path: Path, sig: int) -> tuple[Path, int, str]:
    """Start the reference run, wait for a checkpoint inside epoch 2, send ``sig``."""
    (tmp_path / "tiny.yaml").write_text(TINY)
    proc = start_visattn("train", "--config", tmp_path / "tiny.yaml", "--output", tmp_path / "runs", *FLAGS)
    wait_for_mid_epoch(proc, tmp_path / "runs")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    return only_run(tmp_path / "runs"), proc.returncode, err


def assert_same_run(run: Path, reference: Path) -> None:
    assert (run / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()
    got, want = load_file(str(run / "last.safetensors")), load_file(str(reference / "last.safetensors"))
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(tmp_path, reference):
    run, code, _ = interrupt(tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL
    state = load_state(run / "last.state.pt")
    assert state["epoch"] == 1 and 0 < state["batch"] < 40  # killed inside the second epoch
    resumed = run_visattn("train", "--resume", "last", "--output", tmp_path / "runs")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    assert_same_run(run, reference)


def test_sigterm_mid_epoch_saves_exits_zero_and_resumes(tmp_path, reference):
    run, code, err = interrupt(tmp_path, signal.SIGTERM)
    assert code == 0, err
    state = load_state(run / "last.state.pt")
    assert state["epoch"] == 1 and state["batch"] > 0
    resumed = run_visattn("train", "--resume", run, "--output", tmp_path / "runs")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run, reference)


def test_resume_refuses_changed_settings(tmp_path, reference):
    result = run_visattn("train", "--resume", reference, "--lr", "0.1")
    assert result.returncode == 2
    assert "these flags differ from it: lr" in result.stderr and "Traceback" not in result.stderr


def tiny_config(tmp_path: Path, **extra: object):
    (tmp_path / "tiny.yaml").write_text(TINY)
    out = tmp_path / "runs"
    return resolve_config(tmp_path / "tiny.yaml", output=out, epochs=1, checkpoint_every=10, **extra)


def test_truncated_checkpoint_falls_back_to_the_previous_good_one(tmp_path, caplog):
    config = tiny_config(tmp_path)
    summary = train(config)
    run = Path(summary["run_dir"])
    last = run / "last.safetensors"
    data = last.read_bytes()
    last.write_bytes(data[: random.Random(3).randrange(8, len(data) - 1)])
    with pytest.raises(CheckpointError, match="truncated"):  # named: loaded as it is or not at all
        train(config, resume=run)
    messages = []
    reporter = LogReporter()
    reporter.message = messages.append
    # The run was complete: resuming re-evaluates only.
    resumed = train(config, resume=run, fallback=True, reporter=reporter)
    assert f"cannot resume from {last}" in caplog.text and "truncated" in caplog.text
    assert any(f"{last} cannot be used" in m and "older snapshot" in m for m in messages), messages
    assert resumed["test_accuracy"] == summary["test_accuracy"]
    for snapshot in run.glob("step-*"):
        snapshot.write_bytes(snapshot.read_bytes()[:100])
    last.write_bytes(data[:50])
    with pytest.raises(CheckpointError, match=f"no usable checkpoint to resume in {run}"):
        train(config, resume=run, fallback=True)


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_state_file_with_code_is_refused_and_not_run(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path, keep=0)
    run = Path(train(config)["run_dir"])
    state = run / "last.state.pt"
    good = load_state(state)
    with state.open("wb") as f:
        pickle.dump({**good, "evil": Payload()}, f)
    with pytest.raises(CheckpointError, match=r"last\.state\.pt is not a usable training state"):
        train(config, resume=run)
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        train(config, resume=run, fallback=True)
    assert "last.state.pt is not a usable training state" in caplog.text
    assert not (tmp_path / "pwned").exists()
    model, _ = load_model(run / "best.safetensors")  # the weights themselves are fine
    assert model is not None
