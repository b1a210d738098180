"""explain(): baselines by hand, the attention map visattn always showed, and the refusals."""

from __future__ import annotations

import math

import pytest
import torch

from visattn import create_model
from visattn.explain import explain, model_heatmap
from visattn.registry import EXPLAINERS


def _cnn(attention: str | None = "mhsa") -> torch.nn.Module:
    return create_model(
        "attention_cnn", num_classes=3, in_channels=2, widths=(8, 8), strides=(2, 2), attention=attention
    )


def test_every_method_is_registered():
    assert EXPLAINERS.names() == sorted(
        [
            "attention",
            "centre",
            "grad-attention",
            "gradcam",
            "gradcam++",
            "hirescam",
            "input",
            "random",
            "rollout",
        ]
    )


def test_baselines_by_hand():
    model = _cnn()
    x = torch.randn(2, 2, 4, 6)
    # input: the channel mean, scaled to [0, 1] per image
    mean = x.mean(dim=1)
    low, high = mean.amin(dim=(1, 2), keepdim=True), mean.amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(explain(model, x, method="input"), (mean - low) / (high - low))
    # centre: exp(-r^2 / 2) with r in units of a quarter side, pixel centres at +0.5
    centre = explain(model, x, method="centre")
    g = [
        [math.exp(-0.5 * (((i + 0.5 - 2) / 1) ** 2 + ((j + 0.5 - 3) / 1.5) ** 2)) for j in range(6)]
        for i in range(4)
    ]
    g = torch.tensor(g)
    torch.testing.assert_close(centre[1], (g - g.min()) / (g.max() - g.min()))
    # random: seeded, in [0, 1), a new seed a new map
    first, again = explain(model, x, method="random", seed=3), explain(model, x, method="random", seed=3)
    assert torch.equal(first, again) and not torch.equal(first, explain(model, x, method="random", seed=4))
    assert first.shape == (2, 4, 6) and float(first.min()) >= 0 and float(first.max()) < 1


def test_attention_method_is_the_heat_map_visattn_shows():
    model = _cnn().eval()
    x = torch.randn(2, 2, 12, 8)
    _, heat, _ = model_heatmap(model, x)
    torch.testing.assert_close(explain(model, x, method="attention"), heat)


def test_refusals_name_the_problem():
    model = _cnn()
    x = torch.randn(1, 2, 8, 8)
    with pytest.raises(ValueError, match=r"method must be one of attention, centre, .*rollout, got 'lime'"):
        explain(model, x, method="lime")
    with pytest.raises(ValueError, match=r"no spatial attention map.*gradcam"):
        explain(_cnn(None), x, method="attention")
    with pytest.raises(ValueError, match=r"target must be a class in 0\.\.2, got 3"):
        explain(model, x, method="gradcam", target=3)
    with pytest.raises(ValueError, match=r"target must be a class in 0\.\.2"):
        explain(model, x, method="centre", target=-1)
    with pytest.raises(ValueError, match="method 'gradcam' takes no option head_fusion"):
        explain(model, x, method="gradcam", head_fusion="max")
    with pytest.raises(ValueError, match="head_fusion must be one of mean, max, min, got 'median'"):
        explain(model, x, method="rollout", head_fusion="median")
    with pytest.raises(ValueError, match=r"discard_ratio must be in \[0, 1\), got 1.0"):
        explain(model, x, method="rollout", discard_ratio=1.0)
    with pytest.raises(ValueError, match="explain expects images of shape"):
        explain(model, x[0], method="input")
