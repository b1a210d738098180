"""``compare`` end to end on tiny members: each member trained once, members added without
retraining the others, the same seeds giving the same numbers, a foreign recipe refused, an
interrupted member kept and resumed; the command's one-line errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import visattn.compare.run as run
from visattn.cli import app
from visattn.compare import CompareError, compare
from visattn.train.config import TrainConfig

TINY = {"widths": [8, 8], "strides": [2, 2]}


def _base(**options) -> TrainConfig:
    values = {"dataset": "mnist-sample", "epochs": 1, "model_options": TINY, "scorecard_images": 20,
              "deterministic": True, **options}  # fmt: skip
    return TrainConfig(**values)


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = run.train

    def train(cfg, **kw):
        calls.append((cfg.attention, cfg.seed, kw.get("resume") is not None))
        return real(cfg, **kw)

    monkeypatch.setattr(run, "train", train)
    return calls


@pytest.mark.slow
def test_members_are_trained_once_and_added_without_retraining(tmp_path, counted):
    rows = compare(_base(), "none,se", [0, 1], tmp_path)
    assert sorted(counted) == [("none", 0, False), ("none", 1, False), ("se", 0, False), ("se", 1, False)]
    assert {r["attention"]: r["seeds"] for r in rows} == {"none": [0, 1], "se": [0, 1]}
    se = next(r for r in rows if r["attention"] == "se")
    assert se["vs_none"]["seeds"] == 2 and se["faithfulness"] is None  # SE records no spatial map
    first = json.loads((tmp_path / "leaderboard.json").read_text())
    counted.clear()
    again = compare(_base(), "none,se", [0, 1], tmp_path)
    assert counted == [] and again == rows  # nothing retrained; the kept measurements give the same rows
    compare(_base(), "mhsa", [0], tmp_path)
    assert counted == [("mhsa", 0, False)]
    board = json.loads((tmp_path / "leaderboard.json").read_text())
    assert {r["attention"] for r in board["rows"]} == {"none", "se", "mhsa"}
    assert [r for r in board["rows"] if r["attention"] != "mhsa"] == first["rows"]
    mhsa = next(r for r in board["rows"] if r["attention"] == "mhsa")
    assert mhsa["faithfulness"] is not None and mhsa["vs_none"] is None  # one seed: no interval
    assert (tmp_path / "report.html").is_file() and (tmp_path / "leaderboard.png").is_file()

    with pytest.raises(CompareError, match=r"another recipe .*'smoothing': 0.0.*'smoothing': 0.1"):
        compare(_base(smoothing=0.1), "none", [0], tmp_path)
    with pytest.raises(CompareError, match="another epochs"):
        compare(_base(epochs=2), "none", [0], tmp_path)


@pytest.mark.slow
def test_same_seeds_give_the_same_numbers(tmp_path):
    a = compare(_base(), "mhsa", [3], tmp_path / "a")
    b = compare(_base(), "mhsa", [3], tmp_path / "b")
    keys = ("test_accuracy", "pointing_game", "faithfulness", "parameters", "flops")
    assert [a[0][k] for k in keys] == [b[0][k] for k in keys]


@pytest.mark.slow
def test_an_interrupted_member_is_kept_and_goes_on(tmp_path, monkeypatch, counted):
    real = run.train

    def stopped_second(cfg, **kw):
        if cfg.seed == 1:
            return {"stopped": "SIGINT", "run_dir": str(tmp_path)}
        return real(cfg, **kw)

    monkeypatch.setattr(run, "train", stopped_second)
    with pytest.raises(CompareError, match=r"interrupted while training none-seed1 .*rerun the same command"):
        compare(_base(), "none", [0, 1], tmp_path)
    (done,) = (tmp_path / "members" / "none-seed0").iterdir()
    assert (done / "member.json").is_file()
    # a member stopped after its last checkpoint: its run folder has weights but no member.json
    monkeypatch.setattr(run, "train", real)
    compare(_base(), "none", [1], tmp_path)
    (partial,) = (tmp_path / "members" / "none-seed1").iterdir()
    (partial / "member.json").unlink()
    calls = []
    monkeypatch.setattr(run, "train", lambda cfg, **kw: calls.append(kw["resume"]) or real(cfg, **kw))
    rows = compare(_base(), "none", [0, 1], tmp_path)
    assert calls == [partial] and rows[0]["seeds"] == [0, 1]


def test_command_errors_are_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["compare", "--attention", "se,nope", "--output", str(tmp_path / "c")])
    assert result.exit_code == 2 and "unknown attention 'nope'" in result.output
    assert "Traceback" not in result.output
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = runner.invoke(app, ["compare", "--attention", "se", "--output", str(blocker / "c")])
    assert result.exit_code == 2 and "cannot write the comparison folder" in result.output
    result = runner.invoke(app, ["compare", "--preset", "long", "--output", str(tmp_path / "c")])
    assert result.exit_code == 2 and "--preset must be one of: short" in result.output


@pytest.mark.slow
def test_equal_time_gives_the_faster_network_more_epochs_and_keeps_the_budget(tmp_path, monkeypatch):
    seconds = {"none": 0.01, "mhsa": 0.03, "se": 0.015}  # a step of each, as the probe would time it
    monkeypatch.setattr(run, "_step_seconds", lambda base, task, attention, batch: seconds[attention])
    rows = compare(_base(), "none,mhsa", [0], tmp_path, budget="equal-time")
    plan = json.loads((tmp_path / "comparison.json").read_text())
    assert plan["member_epochs"] == {"none": 3, "mhsa": 1} and plan["slowest_step_seconds"] == 0.03
    assert {r["attention"]: r["seeds"] for r in rows} == {"none": [0], "mhsa": [0]}
    (none_run,) = (tmp_path / "members" / "none-seed0").iterdir()
    assert json.loads((none_run / "member.json").read_text())["epochs"] == 3
    compare(_base(), "se", [0], tmp_path, budget="equal-time")  # added later: the first budget holds
    plan = json.loads((tmp_path / "comparison.json").read_text())
    assert plan["member_epochs"]["se"] == 2 and plan["slowest_step_seconds"] == 0.03
    with pytest.raises(CompareError, match="another budget"):
        compare(_base(), "se", [0], tmp_path)


def test_the_step_probe_times_a_real_training_step():
    from visattn.data import load_dataset
    from visattn.tasks import Classification

    base = _base()
    bundle = load_dataset("mnist-sample")
    batch = bundle.train.__getitems__(list(range(16)))
    seconds = run._step_seconds(base, Classification(bundle), "mhsa", batch, steps=2)
    assert 0 < seconds < 5
