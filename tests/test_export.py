"""visattn export: ONNX (checked, compared in onnxruntime) and exported programs; predict
reads the ONNX file."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from visattn import create_model
from visattn.cli import app
from visattn.export import ExportError, export_checkpoint, export_model, load_onnx_predictor
from visattn.train.checkpoint import save_weights

META = {
    "model": "attention_cnn", "model_kwargs": {"attention": "cbam", "widths": [8, 16], "strides": [2, 2]},
    "num_classes": 10, "in_channels": 1, "classes": [str(d) for d in range(10)], "dataset": "mnist-sample",
    "input_size": [28, 28], "mean": [0.13], "std": [0.31],
}  # fmt: skip


@pytest.fixture
def checkpoint(tmp_path):
    model = create_model("attention_cnn", num_classes=10, in_channels=1, attention="cbam", widths=(8, 16),
                         strides=(2, 2))  # fmt: skip
    path = tmp_path / "best.safetensors"
    save_weights(path, model, META)
    return path, model.eval()


def test_onnx_export_checks_and_matches(checkpoint, tmp_path):
    path, model = checkpoint
    report = export_checkpoint(path, fmt="onnx")
    assert report.path == tmp_path / "model.onnx" and report.max_abs_diff <= 1e-4
    proto = onnx.load(str(report.path))
    onnx.checker.check_model(proto, full_check=True)
    assert json.loads({p.key: p.value for p in proto.metadata_props}["visattn"]) == META
    run, meta = load_onnx_predictor(report.path)
    assert meta == META
    x = torch.randn(4, 1, 28, 28)  # a batch size the export never saw
    with torch.no_grad():
        torch.testing.assert_close(run(x), model(x), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="exists"):
        export_checkpoint(path, fmt="onnx")


def test_exported_program(checkpoint):
    path, model = checkpoint
    report = export_checkpoint(path, fmt="exported-program")
    loaded = torch.export.load(str(report.path)).module()
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_a_wrong_export_fails_loudly(checkpoint, tmp_path):
    _, model = checkpoint

    class Drifting(torch.nn.Module):
        """Behaves differently in PyTorch than in the exported graph (random noise)."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x) + torch.rand_like(self.inner(x))

    with pytest.raises(ExportError, match="differ from PyTorch's"):
        export_model(Drifting(model), META, tmp_path / "drift.onnx", fmt="onnx")


def test_cli_export_and_predict_with_onnx(checkpoint, tmp_path):
    path, _ = checkpoint
    runner = CliRunner()
    result = runner.invoke(app, ["export", "--checkpoint", str(path), "--output", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    image = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8), "L").save(image)
    from_onnx = runner.invoke(
        app, ["predict", str(image), "--checkpoint", str(tmp_path / "m.onnx"), "--json"]
    )
    from_ckpt = runner.invoke(app, ["predict", str(image), "--checkpoint", str(path), "--json"])
    assert from_onnx.exit_code == 0 and from_ckpt.exit_code == 0
    a, b = json.loads(from_onnx.stdout)[0]["top"], json.loads(from_ckpt.stdout)[0]["top"]
    assert [r["class"] for r in a] == [r["class"] for r in b]
    assert all(abs(r["probability"] - s["probability"]) < 1e-4 for r, s in zip(a, b, strict=True))
    again = runner.invoke(app, ["export", "--checkpoint", str(path), "--output", str(tmp_path / "m.onnx")])
    assert again.exit_code == 2 and "exists" in again.stderr
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"not onnx")
    bad = runner.invoke(app, ["predict", str(image), "--checkpoint", str(fake)])
    assert bad.exit_code == 2 and "not a readable ONNX file" in bad.stderr and "Traceback" not in bad.output
