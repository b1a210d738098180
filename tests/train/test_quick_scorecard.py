"""The quick scorecard a classification run ends with: written with the figures, its numbers
in the summary equal to the file's, sized by ``scorecard_images``, and off at 0."""

from __future__ import annotations

import json

import torch

from visattn.data import load_dataset
from visattn.explain import quick_scorecard
from visattn.tasks import Classification


def _task_and_model(images: int) -> tuple[Classification, torch.nn.Module]:
    task = Classification(load_dataset("cluttered-mnist"), scorecard_images=images)
    torch.manual_seed(0)
    model = task.build_model("attention_cnn", {"widths": [8, 8], "strides": [2, 2]}).eval()
    return task, model


def test_a_run_ends_with_the_quick_scorecard_and_none_when_asked(tmp_path):
    task, model = _task_and_model(12)
    evaluation = task.evaluate(model, device=torch.device("cpu"), rank=0, world=1, channels_last=False)
    written = task.write_figures(model, evaluation, tmp_path, device=torch.device("cpu"))
    card = json.loads((tmp_path / "scorecard.json").read_text())
    assert card["protocol"]["images"] == 12 and written["scorecard"]["images"] == 12
    assert {r["method"]: r["insertion_auc"] for r in card["methods"]} == {
        m: v["insertion_auc"] for m, v in written["scorecard"]["methods"].items()
    }
    # the same numbers as calling the library directly on the same (spread) images
    direct = quick_scorecard(model, task.bundle.test, images=12)
    for s, r in zip(direct.scores, card["methods"], strict=True):
        assert abs(float(s.insertion_auc.mean()) - r["insertion_auc"]) <= 1e-6  # records keep 6 places
    off, other = _task_and_model(0)
    out = tmp_path / "off"
    out.mkdir()
    assert "scorecard" not in off.write_figures(other, evaluation, out, device=torch.device("cpu"))
    assert not (out / "scorecard.json").exists() and (out / "attention.png").exists()
