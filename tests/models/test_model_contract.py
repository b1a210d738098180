"""The model contract, for every registered model: shapes, forward_features / forward_head,
clear input errors, and ONNX export matching onnxruntime at two batch sizes."""

from __future__ import annotations

import functools

import pytest
import torch

from visattn.export import export_model
from visattn.models import MODELS, create_model

NAMES = MODELS.names()
ONNX_LIMIT = 30e6  # larger models: benchmarks/export_models.py (results in docs/models.md)


@functools.cache
def built(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=7, in_channels=3).eval()


def params(name: str) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in create_model(name, num_classes=7).parameters())


@pytest.mark.parametrize("name", NAMES)
def test_forward_features_head_and_errors(name):
    model = built(name)
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        assert logits.shape == (2, 7) and torch.isfinite(logits).all()
        torch.testing.assert_close(model.forward_head(features), logits)
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 3, H, W\)"):
        model(torch.randn(2, 4, 64, 48))


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in NAMES if params(n) <= ONNX_LIMIT])
def test_onnx_export_matches_onnxruntime(name, tmp_path):
    meta = {"model": name, "in_channels": 3, "input_size": [64, 64], "num_classes": 7}
    report = export_model(built(name), meta, tmp_path / f"{name}.onnx", fmt="onnx", tolerance=1e-4)
    assert report.max_abs_diff <= 1e-4 and report.batches == (1, 3)
