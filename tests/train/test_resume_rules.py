"""Resume rules: a named checkpoint loads as it is or the command stops with the reason; only
``--resume last`` falls back to an older snapshot, and says so; another device type is refused
unless asked for; an interrupted run with augmentation, loader workers and dropout resumes
bitwise."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainkit import TINY, run_visattn

from visattn.train.checkpoint import load_state, save_state
from visattn.train.config import resolve_config
from visattn.train.loop import LogReporter, TrainingError, train


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished one-epoch run with step snapshots at steps 30 and 40 besides last."""
    root = tmp_path_factory.mktemp("finished")
    (root / "tiny.yaml").write_text(TINY)
    cfg = resolve_config(root / "tiny.yaml", output=root / "runs", epochs=1, checkpoint_every=10)
    return Path(train(cfg)["run_dir"])


def copy_run(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "runs" / run.name
    shutil.copytree(run, copy)
    return copy


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_a_named_checkpoint_that_fails_to_load_stops_with_the_reason(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    truncate(run / "last.safetensors")
    for named in (run / "last.safetensors", run):
        result = run_visattn("train", "--resume", named)
        assert result.returncode == 2, result.stderr
        last_line = result.stderr.strip().splitlines()[-1]
        assert last_line.startswith("error:") and "truncated" in last_line, result.stderr
        assert "older snapshot" not in result.stderr and "Traceback" not in result.stderr


def test_resume_last_falls_back_and_says_so(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    truncate(run / "last.safetensors")
    result = run_visattn("train", "--resume", "last", "--output", run.parent)
    assert result.returncode == 0, result.stderr
    assert f"{run / 'last.safetensors'} cannot be used" in result.stderr
    assert f"resuming from the older snapshot {run / 'step-0000040.safetensors'}" in result.stderr
    assert "image size 28x28: " in result.stderr  # every run says at which size it trains


def set_trained_device(run: Path, device: str) -> None:
    """Mark the run's last checkpoint as written on ``device`` (the state keeps its set stamp)."""
    state = load_state(run / "last.state.pt")
    save_state(run / "last.state.pt", {**state, "device": device})


def test_another_device_type_is_refused_unless_allowed(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    set_trained_device(run, "cuda")
    cfg = resolve_config(run / "config.yaml", device="cpu")
    with pytest.raises(TrainingError, match="trained on cuda, this run would go on on cpu"):
        train(cfg, resume=run)
    result = run_visattn("train", "--resume", run, "--device", "cpu")
    assert result.returncode == 2 and "--allow-device-change" in result.stderr.strip().splitlines()[-1]
    summary = train(cfg, resume=run, allow_device_change=True)  # finished: re-evaluates only
    assert summary["steps"] == 40


class Crash(RuntimeError):
    pass


class CrashAt(LogReporter):
    """Dies like a killed process at the progress report of optimizer step ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at

    def step(self, epoch: int, step: int, values: dict[str, float], images_per_s: float) -> None:
        if (epoch - 1) * 40 + step == self.at:
            raise Crash


@pytest.mark.slow
def test_crash_with_augmentation_workers_and_dropout_resumes_bitwise(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    extra = {"augment": "basic", "workers": 2, "model_options": {"widths": [8, 16], "strides": [2, 2],
             "drop_rate": 0.3}, "checkpoint_every": 4}  # fmt: skip
    reference = train(resolve_config(tmp_path / "tiny.yaml", output=tmp_path / "ref", **extra))
    cfg = resolve_config(tmp_path / "tiny.yaml", output=tmp_path / "cut", **extra)
    with pytest.raises(Crash):
        train(cfg, reporter=CrashAt(50))  # epoch 2, step 10: the last checkpoint is step 48
    (run,) = (tmp_path / "cut").iterdir()
    assert load_state(run / "last.state.pt")["step"] == 48
    resumed = train(cfg, resume=run)
    ref = Path(reference["run_dir"])
    assert (run / "metrics.csv").read_bytes() == (ref / "metrics.csv").read_bytes()
    got, want = load_file(str(run / "last.safetensors")), load_file(str(ref / "last.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert resumed["test_accuracy"] == reference["test_accuracy"]
