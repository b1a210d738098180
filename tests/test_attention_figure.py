"""The attention figure: which images a run shows, and how unlabeled images are titled."""

from __future__ import annotations

import matplotlib.axes
import numpy as np
import pytest
import torch
from PIL import Image

from visattn import create_model
from visattn.data import ImageTensorDataset
from visattn.explain import figure, save_attention_grid, save_model_attention
from visattn.explain.figure import pick_examples


@pytest.fixture
def titles(monkeypatch):
    """Every axes title the figure sets."""
    seen = []
    real = matplotlib.axes.Axes.set_title

    def set_title(self, label, *args, **kwargs):
        seen.append(label)
        return real(self, label, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", set_title)
    return seen


def grid_inputs(n=2, classes=10):
    probs = torch.full((n, classes), 0.01)
    probs[:, 0] = 0.91  # "0" is predicted for every image
    return torch.rand(n, 1, 8, 8), torch.rand(n, 8, 8), probs, [str(c) for c in range(classes)]


def test_an_unlabeled_image_is_titled_with_its_prediction_only(tmp_path, titles):
    images, heat, probs, classes = grid_inputs()
    save_attention_grid(tmp_path / "a.png", images, heat, probs, classes, labels=torch.tensor([-1, -1]))
    rows = [t for t in titles if t.startswith("predicted")]
    assert rows == ["predicted 0", "predicted 0"]  # not "predicted 0 (true 9)"
    titles.clear()
    save_attention_grid(tmp_path / "b.png", images, heat, probs, classes, labels=torch.tensor([9, -1]))
    assert [t for t in titles if t.startswith("predicted")] == ["predicted 0 (true 9)", "predicted 0"]


def test_pick_examples_spreads_classes_and_shows_mistakes():
    # 4 classes, 3 images each, in class order (as an image folder's test split comes);
    # images 2 and 7 are misclassified
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    predicted = labels.clone()
    predicted[2], predicted[7] = 1, 0
    # a quarter of 8 rows are mistakes (2 and 7), the rest spread: each class twice
    assert pick_examples(labels, predicted, 8) == [0, 2, 3, 4, 6, 7, 9, 10]
    # one mistake of 4 rows (the first, of class 0), then the classes not shown yet
    assert pick_examples(labels, predicted, 4) == [2, 3, 6, 9]
    assert pick_examples(labels, labels, 4) == [0, 3, 6, 9]  # no mistake to show
    assert pick_examples(labels, predicted, 20) == list(range(12))  # all there are
    # a model that always says 2: classes 0 and 1 can only be shown by their mistakes
    always = torch.full((6,), 2)
    assert pick_examples(torch.tensor([0, 0, 1, 1, 2, 2]), always, 4) == [0, 1, 2, 4]
    unlabeled = torch.full((5,), -1)
    assert pick_examples(unlabeled, torch.zeros(5, dtype=torch.long), 3) == [0, 1, 2]


def test_the_run_figure_shows_several_classes_and_a_mistake(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = create_model("attention_cnn", num_classes=4, in_channels=1, widths=(8, 8), strides=(2, 2)).eval()
    images = torch.randint(0, 255, (40, 1, 16, 16), dtype=torch.uint8)
    labels = torch.arange(40) // 10  # sorted by class: the first 8 are all class 0
    data = ImageTensorDataset(images, labels, stats=((0.5,), (0.25,)))
    with torch.no_grad():
        predicted = model(data.__getitems__(list(range(40)))[0]).argmax(1)
    drawn = {}
    monkeypatch.setattr(
        figure, "save_attention_grid", lambda *a, **k: drawn.update(args=a, labels=k["labels"])
    )
    save_model_attention(model, data, list("abcd"), tmp_path / "attention.png", count=8)
    shown = drawn["labels"]
    assert len(shown) == 8 and len(set(shown.tolist())) == 4  # every class, not 8 images of class 0
    probs = drawn["args"][3]
    wrong = probs.argmax(1) != shown
    assert (predicted != labels).any() and wrong.any()  # a mistake of the model is among them
    in_order = {}
    monkeypatch.setattr(figure, "save_attention_grid", lambda *a, **k: in_order.update(labels=k["labels"]))
    save_model_attention(
        model, data, list("abcd"), tmp_path / "files.png", count=3, start=11, choose="in-order"
    )
    assert in_order["labels"].tolist() == labels[11:14].tolist()
    with pytest.raises(ValueError, match="choose must be one of 'varied', 'in-order'"):
        save_model_attention(model, data, list("abcd"), tmp_path / "x.png", choose="best")


def test_attention_maps_on_own_files_claims_no_true_class(tmp_path, titles):
    from typer.testing import CliRunner

    from visattn.cli import app
    from visattn.train.checkpoint import save_weights

    model = create_model("attention_cnn", num_classes=10, in_channels=1, widths=(8, 8), strides=(2, 2))
    meta = {
        "model": "attention_cnn", "model_kwargs": {"widths": [8, 8], "strides": [2, 2]}, "num_classes": 10,
        "in_channels": 1, "classes": [str(d) for d in range(10)], "dataset": "mnist-sample",
        "input_size": [28, 28], "mean": [0.13], "std": [0.31],
    }  # fmt: skip
    save_weights(tmp_path / "model.safetensors", model, meta)
    files = []
    for n in range(2):
        files.append(tmp_path / f"mine-{n}.png")
        Image.fromarray(np.random.default_rng(n).integers(0, 255, (28, 28), dtype=np.uint8), "L").save(
            files[-1]
        )
    args = [
        "attention-maps",
        "--checkpoint",
        tmp_path / "model.safetensors",
        *files,
        "--output",
        tmp_path / "m.png",
    ]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    rows = [t for t in titles if t.startswith("predicted")]
    assert len(rows) == 2 and not any("true" in t for t in rows), rows
