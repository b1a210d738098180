"""`visattn explain`: its refusals end in one line and exit code 2; the scorecard writes its files
with the documented keys into the run folder."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from visattn import create_model
from visattn.cli import app
from visattn.train.checkpoint import save_weights

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})


def assert_user_error(result, *fragments):
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error:") and "\n" not in err, err
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in err, err


def run_folder(tmp_path, attention: str | None = "mhsa"):
    """A run folder holding a tiny untrained AttentionCNN for Cluttered MNIST (boxes: pointing)."""
    folder = tmp_path / f"run-{attention}"
    folder.mkdir()
    model = create_model(
        "attention_cnn", num_classes=10, in_channels=1, attention=attention, widths=(8, 16), strides=(2, 2)
    )
    meta = {
        "model": "attention_cnn",
        "model_kwargs": {"attention": attention, "widths": [8, 16], "strides": [2, 2]},
        "num_classes": 10, "in_channels": 1, "classes": [str(d) for d in range(10)],
        "dataset": "cluttered-mnist", "input_size": [60, 60], "mean": [0.1], "std": [0.3],
    }  # fmt: skip
    save_weights(folder / "best.safetensors", model, meta)
    return folder


@pytest.fixture
def run(tmp_path):
    return run_folder(tmp_path)


def test_unknown_method_lists_the_valid_ones(run):
    assert_user_error(invoke("explain", "--checkpoint", run, "--method", "saliency"), "saliency", "gradcam++")


def test_attention_method_on_a_model_without_attention_suggests_a_cam(tmp_path):
    plain = run_folder(tmp_path, attention=None)
    result = invoke("explain", "--checkpoint", plain, "--method", "attention", "--images", "2")
    assert_user_error(result, "attention", "gradcam")


def test_target_out_of_range_and_options_without_scorecard(run):
    assert_user_error(invoke("explain", "--checkpoint", run, "--target", "10"), "0..9", "10")
    assert_user_error(invoke("explain", "--checkpoint", run, "--sanity"), "--scorecard")
    assert not list(run.glob("scorecard*")) and not list(run.glob("explain*"))


def test_scorecard_writes_its_files_with_the_documented_keys(run):
    result = invoke(
        "explain", "--checkpoint", run, "--scorecard", "--method", "gradcam", "--images", "5", "--steps", "3",
        "--sanity",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "faithfulness scorecard" in result.output and "gradcam" in result.output
    for name in ("scorecard.csv", "scorecard.json", "scorecard_curves.png", "scorecard_maps.png"):
        assert (run / name).stat().st_size > 0, name
    card = json.loads((run / "scorecard.json").read_text())
    assert card["protocol"]["images"] == 5 and card["protocol"]["steps"] == 3
    assert [r["method"] for r in card["methods"]] == ["gradcam", "random", "centre", "input"]
    keys = {"method", "pointing", "deletion_auc", "insertion_auc", "road", "sanity_rank_corr",
            "head_rank_corr", "seconds", "fails_randomisation", "class_agnostic", "margins"}  # fmt: skip
    cam = card["methods"][0]
    assert set(cam) == keys and cam["road"] is None and 0 <= cam["pointing"] <= 1
    assert set(cam["margins"]) == {"random", "centre", "input"}
    assert set(cam["margins"]["input"]["insertion_auc"]) == {"mean", "low", "high"}
    with (run / "scorecard.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["gradcam", "random", "centre", "input"]
    assert float(rows[0]["deletion_auc"]) == cam["deletion_auc"] and rows[0]["road"] == ""

    result = invoke("explain", "--checkpoint", run / "best.safetensors", "--method", "input", "--images", "2")
    assert result.exit_code == 0, result.output
    assert (run / "explain_maps.png").stat().st_size > 0
