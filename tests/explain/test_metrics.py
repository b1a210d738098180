"""Deletion and insertion against pytorch-grad-cam's perturbation metric on the same maps,
the blur against torchvision's, and the area by the trapezoid rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from visattn.explain.metrics import auc, deletion_insertion, gaussian_blur, relevance_order

metrics = pytest.importorskip("pytorch_grad_cam.metrics.perturbation_confidence")
targets_module = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
tv_functional = pytest.importorskip("torchvision.transforms.v2.functional")


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 64, 4)).eval()


def test_curves_equal_pytorch_grad_cams_perturbation_metric():
    model = _model()
    x = torch.randn(3, 2, 8, 8)
    heat = torch.rand(3, 8, 8)  # no ties: both sides order the pixels alike
    steps, n, sigma = 8, 64, 1.5
    curves = deletion_insertion(model, x, heat, steps=steps, blur_sigma=sigma, batch_size=7)

    def blur_imputer(img: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return img * keep + gaussian_blur(img[None], sigma)[0] * (1 - keep)

    with torch.no_grad():
        probs = model(x).softmax(1)
    classes = probs.argmax(1)
    targets = [targets_module.ClassifierOutputSoftmaxTarget(int(c)) for c in classes]
    clean = probs[torch.arange(3), classes].numpy()
    cams = heat.numpy()
    deletion, insertion = [clean], []
    for k in range(1, steps + 1):
        kept = n - k * n // steps  # pixels left after deleting k steps
        # np.percentile interpolates: this percentile puts the threshold between the kept-th
        # and the next value, so exactly `kept` pixels lie below it.
        remove = metrics.RemoveMostRelevantFirst(100 * (kept - 0.5) / (n - 1) if kept else 0, blur_imputer)
        metric = metrics.PerturbationConfidenceMetric(remove)
        deletion.append(metric(x, cams, targets, model, return_diff=False))
    for k in range(steps):
        kept = k * n // steps  # most relevant pixels already put back
        insert = metrics.RemoveLeastRelevantFirst(100 * (kept - 0.5) / (n - 1) if kept else 0, blur_imputer)
        metric = metrics.PerturbationConfidenceMetric(insert)
        insertion.append(metric(x, cams, targets, model, return_diff=False))
    insertion.append(clean)
    deletion, insertion = np.stack(deletion, 1), np.stack(insertion, 1)  # (B, steps + 1)
    np.testing.assert_allclose(curves.deletion.numpy(), deletion, atol=1e-4)
    np.testing.assert_allclose(curves.insertion.numpy(), insertion, atol=1e-4)
    grid = np.linspace(0, 1, steps + 1)
    np.testing.assert_allclose(curves.deletion_auc.numpy(), np.trapezoid(deletion, grid, axis=1), atol=1e-4)
    np.testing.assert_allclose(curves.insertion_auc.numpy(), np.trapezoid(insertion, grid, axis=1), atol=1e-4)


def test_blur_matches_torchvision_away_from_the_edges():
    x = torch.randn(2, 3, 20, 24)
    ours = gaussian_blur(x, 1.5)  # 3-sigma kernel: 11 taps
    theirs = tv_functional.gaussian_blur(x, [11, 11], [1.5, 1.5])
    torch.testing.assert_close(ours[..., 5:-5, 5:-5], theirs[..., 5:-5, 5:-5], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="blur_sigma must be positive, got 0"):
        gaussian_blur(x, 0)


def test_ties_follow_a_seeded_order_and_auc_is_the_trapezoid():
    heat = torch.zeros(1, 4, 4)
    heat[0, 1, 2] = 1.0
    first = relevance_order(heat, seed=1)
    assert first[0, 0] == 6 and torch.equal(first, relevance_order(heat, seed=1))
    assert not torch.equal(first, relevance_order(heat, seed=2))
    assert sorted(first[0].tolist()) == list(range(16))
    torch.testing.assert_close(auc(torch.tensor([[1.0, 0.5, 0.0]])), torch.tensor([0.5]))
    torch.testing.assert_close(auc(torch.tensor([[0.0, 1.0, 1.0, 1.0]])), torch.tensor([5 / 6]))
