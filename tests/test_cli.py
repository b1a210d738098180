"""The visattn command: user mistakes end in one line and exit code 2; the main commands work
end to end on the embedded data."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from visattn import create_model
from visattn.cli import app
from visattn.data import load_dataset
from visattn.train.checkpoint import save_weights

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    err = result.stderr.strip()
    assert err.startswith("error:") and "\n" not in err, err
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in err, err


def meta(**extra):
    return {
        "model": "attention_cnn",
        "model_kwargs": {"attention": "mhsa", "widths": [8, 16], "strides": [2, 2]},
        "num_classes": 10,
        "in_channels": 1,
        "classes": [str(d) for d in range(10)],
        "dataset": "mnist-sample",
        "input_size": [28, 28],
        "mean": [0.13],
        "std": [0.31],
        **extra,
    }


def tiny(attention="mhsa"):
    return create_model(
        "attention_cnn", num_classes=10, in_channels=1, attention=attention, widths=(8, 16), strides=(2, 2)
    )


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "model.safetensors"
    save_weights(path, tiny(), meta())
    return path


@pytest.fixture
def gray_png(tmp_path):
    path = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8), "L").save(path)
    return path


def test_missing_data_dir_writes_nothing(tmp_path):
    out = tmp_path / "runs"
    assert_user_error(
        invoke("train", "--data-dir", tmp_path / "nope", "--output", out), "data_dir", "does not exist"
    )
    assert not out.exists()


def test_invalid_config_values(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: -0.1\nepochz: 3\n")
    assert_user_error(
        invoke("train", "--config", cfg, "--output", tmp_path / "runs"), "lr", "unknown key 'epochz'"
    )
    assert_user_error(
        invoke("train", "--attention", "cbam9", "--output", tmp_path / "runs"), "unknown attention 'cbam9'"
    )
    assert not (tmp_path / "runs").exists()


def test_non_image_given_to_predict(ckpt, tmp_path):
    fake = tmp_path / "cat.jpg"
    fake.write_text("not really a jpeg")
    assert_user_error(invoke("predict", fake, "--checkpoint", ckpt), "cat.jpg", "not a usable image")
    assert_user_error(invoke("predict", tmp_path / "none.png", "--checkpoint", ckpt), "does not exist")


def test_truncated_checkpoint(ckpt, gray_png):
    ckpt.write_bytes(ckpt.read_bytes()[:-100])
    assert_user_error(invoke("predict", gray_png, "--checkpoint", ckpt), "truncated")
    assert_user_error(invoke("evaluate", "--checkpoint", ckpt), "truncated")


def test_file_that_is_not_a_checkpoint(tmp_path, gray_png):
    assert_user_error(invoke("evaluate", "--checkpoint", gray_png), "not a checkpoint")
    yaml_file = tmp_path / "config.yaml"
    yaml_file.write_text("epochs: 3\n")
    assert_user_error(invoke("predict", gray_png, "--checkpoint", yaml_file), "not a checkpoint")


def test_checkpoint_of_another_model(tmp_path, gray_png):
    path = tmp_path / "other.safetensors"
    save_weights(path, tiny(attention=None), meta())
    assert_user_error(invoke("predict", gray_png, "--checkpoint", path), "does not hold weights of model")


def test_image_with_wrong_channel_count(ckpt, tmp_path):
    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (28, 28), (200, 10, 10)).save(rgb)
    assert_user_error(
        invoke("predict", rgb, "--checkpoint", ckpt), "3 channels (RGB)", "expects 1 (grayscale)"
    )
    result = invoke("predict", rgb, "--checkpoint", ckpt, "--convert")
    assert result.exit_code == 0, result.output


def test_evaluate_on_data_the_model_cannot_take(ckpt):
    assert_user_error(invoke("evaluate", "--checkpoint", ckpt, "--dataset", "nonesuch"), "unknown dataset")


def test_attention_maps_never_overwrites(ckpt, tmp_path, gray_png):
    out = tmp_path / "maps.png"
    out.write_bytes(b"precious")
    assert_user_error(invoke("attention-maps", "--checkpoint", ckpt, "--output", out), "exists")
    assert out.read_bytes() == b"precious"
    assert_user_error(invoke("attention-maps", "--checkpoint", ckpt, "--output", tmp_path / "m.jpg"), ".png")


def test_tables():
    result = invoke("attention")
    assert result.exit_code == 0 and "mhsa" in result.output and "global" in result.output
    result = invoke("models")
    assert result.exit_code == 0 and "attention_cnn" in result.output


def test_real_process_prints_no_traceback(tmp_path):
    fake = tmp_path / "x.png"
    fake.write_bytes(b"")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "visattn",
            "predict",
            str(fake),
            "--checkpoint",
            str(tmp_path / "none.safetensors"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip().startswith("error:")
    assert "none.safetensors does not exist" in proc.stderr


@pytest.mark.slow
def test_train_evaluate_predict_explain(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("dataset: mnist-sample\nattention_options: {heads: 2}\n")
    out = tmp_path / "runs"
    result = invoke("train", "--config", cfg, "--epochs", "3", "--output", out)
    assert result.exit_code == 0, result.output
    (run_dir,) = out.iterdir()
    names = {p.name for p in run_dir.iterdir()}
    steps = sorted(n for n in names if n.startswith("step-"))
    assert names - set(steps) == {
        "config.yaml", "metrics.csv", "timing.csv", "last.safetensors", "last.state.pt", "best.safetensors",
        "attention.png", "confusion.png", "summary.json", "report.html",
        "scorecard.csv", "scorecard.json", "scorecard_curves.png", "scorecard_maps.png",
    }  # fmt: skip
    assert len(steps) == 4  # the two most recent step checkpoints, weights and state each
    summary = json.loads((run_dir / "summary.json").read_text())
    # the closing quick scorecard: the attention map and two baselines, as scorecard.json has them
    card = json.loads((run_dir / "scorecard.json").read_text())
    assert [r["method"] for r in card["methods"]] == ["attention", "random", "input"]
    assert card["protocol"]["images"] == min(200, len(load_dataset("mnist-sample").test))
    for r in card["methods"]:
        assert summary["scorecard"]["methods"][r["method"]] == {
            k: r[k] for k in ("pointing", "deletion_auc", "insertion_auc")
        }
    assert "faithfulness" in result.output and "scorecard.json" in result.output
    assert summary["test_accuracy"] > 0.85 and summary["pointing_game"] is None  # no boxes in plain MNIST
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,train_loss") and len(rows) == 4

    result = invoke("evaluate", "--checkpoint", run_dir)
    assert result.exit_code == 0, result.output
    assert f"{summary['test_accuracy']:.2%}" in result.output

    bundle = load_dataset("mnist-sample")
    png = tmp_path / "seven.png"
    index = int((bundle.test.labels == 7).nonzero()[0])
    Image.fromarray(bundle.test.images[index, 0].numpy(), "L").save(png)
    result = invoke("predict", png, "--checkpoint", run_dir / "best.safetensors", "--top-k", "2")
    assert result.exit_code == 0, result.output
    assert "seven.png" in result.output and "%" in result.output
    result = invoke("predict", png, "--checkpoint", run_dir, "--json")
    assert result.exit_code == 0, result.output
    (record,) = json.loads(result.stdout)
    assert record["image"] == str(png) and record["top"][0]["class"] == "7"
    assert 0.5 < record["top"][0]["probability"] <= 1

    maps_png = tmp_path / "maps.png"
    result = invoke("attention-maps", "--checkpoint", run_dir, "--output", maps_png, "--count", "3")
    assert result.exit_code == 0, result.output
    with Image.open(maps_png) as img:
        assert img.format == "PNG" and img.size[0] > 200
    result = invoke("attention-maps", "--checkpoint", run_dir, png, "--output", tmp_path / "mine.png")
    assert result.exit_code == 0, result.output

    # The saved config repeats the run.
    again = invoke("train", "--config", run_dir / "config.yaml")
    assert again.exit_code == 0, again.output
    assert len(list(out.iterdir())) == 2
    torch.testing.assert_close(
        torch.tensor(json.loads((sorted(out.iterdir())[1] / "summary.json").read_text())["test_accuracy"]),
        torch.tensor(summary["test_accuracy"]),
    )


WIDE = {"COLUMNS": "300", "TERMINAL_WIDTH": "300"}


def help_rows(*args, command=app) -> dict[str, str]:
    """``--help`` of a command as {option: its row}, read off a wide terminal."""
    result = runner.invoke(command, [*args, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    rows = {}
    for line in result.output.splitlines():
        cells = line.strip("│ ").split()
        if cells and cells[0].startswith("--"):
            rows[cells[0]] = line
    return rows


def shown(value) -> str:
    """How --help writes a default (independent of the code that writes it)."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    return "{}" if value == {} else str(value)


def test_train_help_lists_every_config_field_with_its_default():
    from visattn.tasks import TASKS
    from visattn.train.config import TrainConfig

    rows = help_rows("train")
    defaults = TrainConfig()
    for name, field in TrainConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        assert flag in rows, f"{flag} missing from visattn train --help"
        # a setting whose default is the task's is unset in the schema; the help names each task's
        by_task = field.default is None and name in TASKS.get("classification").config_defaults
        assert f"[default: ({'unset' if by_task else shown(getattr(defaults, name))})]" in rows[flag], rows[
            flag
        ]
        if by_task:
            assert all(str(TASKS.get(t).config_defaults[name]) in rows[flag] for t in TASKS), rows[flag]
        assert field.description.split()[0] in rows[flag]  # the help is the field's description


def test_a_new_config_field_is_one_edit(tmp_path):
    """A field added to the schema becomes an option with help and default, and its value
    reaches the command; nothing else is written for it."""
    import typer
    from pydantic import Field

    from visattn.cli_options import schema_parameters, with_parameters
    from visattn.train.config import TrainConfig

    class Extended(TrainConfig):
        mixup: float = Field(0.25, ge=0, description="Mixup strength")

    seen = {}

    def command(**values) -> None:
        seen.update(values)

    demo = typer.Typer()
    demo.command()(with_parameters(command, schema_parameters(Extended)))
    demo.command("other")(lambda: None)  # two commands: typer then names each one
    rows = help_rows("command", command=demo)
    assert "Mixup strength." in rows["--mixup"] and "[default: (0.25)]" in rows["--mixup"]
    assert "-b" in rows["--batch-size"]
    result = runner.invoke(demo, ["command", "--mixup", "0.5", "-b", "32"])
    assert result.exit_code == 0, result.output
    assert seen["mixup"] == 0.5 and seen["batch_size"] == 32 and seen["lr"] is None  # unset: YAML decides


def test_mapping_options_are_read_as_yaml(tmp_path):
    from visattn.train.config import resolve_config

    cfg = resolve_config(
        None, attention_options="{heads: 2}", model_options="{widths: [8, 16], strides: [2, 2]}"
    )
    assert cfg.attention_options == {"heads": 2} and cfg.model_options["widths"] == [8, 16]
    assert_user_error(
        invoke("train", "--attention-options", "{heads: [", "--output", tmp_path / "runs"),
        "attention_options",
        "not valid YAML",
    )
    assert not (tmp_path / "runs").exists()
