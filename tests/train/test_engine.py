"""Engine behaviour: non-finite losses, bad image files, torchrun, accumulation, EMA, options."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from trainkit import ENV, TINY, only_run, run_visattn

from visattn.models import AttentionCNN
from visattn.registry import MODELS
from visattn.train import load_model
from visattn.train.config import resolve_config
from visattn.train.ema import WeightEma
from visattn.train.loop import TrainingError, train


class PoisonedCNN(AttentionCNN):
    """AttentionCNN whose training forward returns NaN logits from its k-th call on."""

    poison_at = 10**9

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.poison_at:
                out = out * float("nan")
        return out


@pytest.fixture
def poisoned(monkeypatch) -> None:
    """Registers PoisonedCNN for one test only, so registry-wide tests never see it."""
    monkeypatch.setitem(MODELS._entries, "poisoned_cnn", PoisonedCNN)


def config(tmp_path: Path, **extra: object):
    (tmp_path / "tiny.yaml").write_text(TINY)
    return resolve_config(tmp_path / "tiny.yaml", output=tmp_path / "runs", **extra)


@pytest.mark.usefixtures("poisoned")
def test_nan_stops_with_a_message_and_the_last_good_checkpoint_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(PoisonedCNN, "poison_at", 13)
    cfg = config(tmp_path, model="poisoned_cnn", checkpoint_every=5)
    with pytest.raises(TrainingError, match="the loss is not finite at epoch 1, step 13; stopping"):
        train(cfg)
    run = only_run(tmp_path / "runs")
    model, meta = load_model(run / "last.safetensors")
    assert meta["step"] == 10  # the checkpoint before the poisoned step
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.isfinite(model(torch.randn(2, 1, 28, 28))).all()


@pytest.mark.usefixtures("poisoned")
def test_nan_skip_skips_steps_and_finishes(tmp_path, monkeypatch):
    monkeypatch.setattr(PoisonedCNN, "poison_at", 75)  # every step from the 75th on
    summary = train(config(tmp_path, model="poisoned_cnn", nan="skip"))
    assert summary["skipped_steps"] == 80 - 74
    rows = (Path(summary["run_dir"]) / "metrics.csv").read_text().splitlines()
    assert rows[-1].split(",")[-1] == "6"
    assert all(
        torch.isfinite(t).all()
        for t in load_file(str(Path(summary["run_dir"]) / "last.safetensors")).values()
    )


def write_folder(root: Path, per_class: int = 12) -> None:
    rng = np.random.default_rng(0)
    for c, name in enumerate(["circle", "square"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = np.zeros((20, 24, 3), np.uint8)
            img[..., c] = 200
            img += rng.integers(0, 40, img.shape, dtype=np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    full = (root / "circle" / "0.jpg").read_bytes()
    (root / "circle" / "cut.jpg").write_bytes(full[: len(full) // 2])  # truncated JPEG
    (root / "square" / "empty.png").write_bytes(b"")  # zero-byte PNG
    (root / "square" / "notes.jpg").write_text("this is text, not a JPEG\n")


def test_image_folder_with_bad_files_trains_and_reports_them(tmp_path):
    write_folder(tmp_path / "shapes")
    cfg = resolve_config(
        None, dataset="imagefolder", data_dir=tmp_path / "shapes", img_size=16, epochs=2, batch_size=4,
        output=tmp_path / "runs", max_bad_fraction=0.2, val_fraction=0.25, attention="se",
    )  # fmt: skip
    summary = train(cfg)
    assert summary["bad_files"] == 3
    reasons = summary["bad_file_list"]
    assert set(reasons) == {
        str(tmp_path / "shapes" / p) for p in ("circle/cut.jpg", "square/empty.png", "square/notes.jpg")
    }
    assert "truncated" in reasons[str(tmp_path / "shapes" / "circle" / "cut.jpg")]
    assert "empty" in reasons[str(tmp_path / "shapes" / "square" / "empty.png")]
    assert json.loads((Path(summary["run_dir"]) / "summary.json").read_text())["bad_files"] == 3
    assert summary["test_accuracy"] > 0.9  # red vs green is easy
    too_strict = cfg.model_copy(update={"max_bad_fraction": 0.05})
    with pytest.raises(Exception, match=r"3 of 27 files are unusable, more than the allowed 5%"):
        train(too_strict)


def test_invalid_configs_write_nothing(tmp_path):
    out = tmp_path / "runs"
    for args, message in [
        (["--lr", "-1"], "lr: Input should be greater than 0"),
        (["--epochs", "x"], "Invalid value for '--epochs'"),
        (["--data-dir", tmp_path / "missing"], "does not exist"),
    ]:
        result = run_visattn("train", "--output", out, *args)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\nbatch_size: many\n")
    result = run_visattn("train", "--config", bad, "--output", out)
    assert result.returncode == 2
    assert (
        "unknown key 'epochz'" in result.stderr
        and "batch_size: Input should be a valid integer" in result.stderr
    )
    assert not out.exists()


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    (tmp_path / "tiny.yaml").write_text(TINY)
    flags = ["train", "--config", tmp_path / "tiny.yaml", "--epochs", "1", "--seed", "3"]
    one = run_visattn(*flags, "--output", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "visattn", *map(str, flags), "--output",
           str(tmp_path / "two")]  # fmt: skip
    two = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**ENV, "OMP_NUM_THREADS": "1"}
    )
    assert two.returncode == 0, two.stderr
    run_one, run_two = only_run(tmp_path / "one"), only_run(tmp_path / "two")  # one run folder each
    s1 = json.loads((run_one / "summary.json").read_text())
    s2 = json.loads((run_two / "summary.json").read_text())
    assert s2["processes"] == 2 and s2["steps"] == s1["steps"] == 40
    # Same global batches and gradients averaged over ranks; BatchNorm normalises each rank's
    # half batch with its own statistics (no SyncBatchNorm on the CPU), so the runs drift
    # apart a little: the tolerance is documented in docs/distributed.md.
    assert abs(s1["test_accuracy"] - s2["test_accuracy"]) <= 0.03
    w1, w2 = load_file(str(run_one / "last.safetensors")), load_file(str(run_two / "last.safetensors"))
    learned = [k for k in w1 if w1[k].is_floating_point() and "running" not in k]
    v1, v2 = (torch.cat([w[k].flatten() for k in learned]) for w in (w1, w2))
    drift = float((v1 - v2).norm() / v1.norm())
    assert drift < 0.05, drift


def test_gradient_accumulation_keeps_the_batch_per_step(tmp_path):
    summary = train(config(tmp_path, epochs=1, grad_accum_steps=4))
    assert summary["steps"] == 40  # 160 micro-batches of 25 make 40 steps of 100 images
    assert summary["test_accuracy"] > 0.2  # chance is 0.1


def test_options_run_end_to_end(tmp_path):
    options = {"opt": "sgd", "lr": 0.05, "sched": "step", "step_every": 1, "smoothing": 0.1, "clip_grad": 1.0}
    extras = {"model_ema_decay": 0.9, "channels_last": True, "augment": "basic", "tensorboard": True}
    cfg = config(tmp_path, epochs=2, **options, **extras)
    summary = train(cfg)
    assert summary["test_accuracy"] > 0.2  # chance is 0.1
    best = load_model(Path(summary["run_dir"]) / "best.safetensors")[0]
    last = load_model(Path(summary["run_dir"]) / "last.safetensors")[0]
    assert not torch.equal(best.head.weight, last.head.weight)  # best holds the EMA weights
    assert list((Path(summary["run_dir"]) / "tensorboard").glob("events.out.tfevents.*"))


def test_weight_ema_update_by_hand():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = WeightEma(model, decay=0.75)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].num_batches_tracked += 5
    ema.update(model)
    got = ema.module.state_dict()
    torch.testing.assert_close(got["0.weight"], 0.75 * start["0.weight"] + 0.25 * (start["0.weight"] + 1))
    assert got["1.num_batches_tracked"] == 5
