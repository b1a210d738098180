"""ROAD, RemOve And Debias (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy
for Attribution Methods", arXiv:2202.00449), through pytorch-grad-cam's ``ROADCombined``.

Removed pixels are filled by noisy linear imputation from their neighbours (a sparse linear
solve per image and threshold), which leaks less of the removed shape than a blur or black.
For each percentile p in 10, 20, ..., 90 the model's softmax probability of the target class
is read after removing the p % *least* relevant pixels (LeRF) and after removing the p % *most*
relevant ones (MoRF); each is taken relative to the clean image's probability, averaged over the
percentiles, and the score is ``(LeRF - MoRF) / 2``: higher is more faithful.

Cost: 18 sparse solves (up to ``H*W`` unknowns) and 18 forward passes per image and method,
so it is an opt-in of the scorecard.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .request import evaluating

PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


def road_scores(model: nn.Module, images: Tensor, ranks: Tensor, classes: Tensor, *, seed: int = 0) -> Tensor:
    """ROAD of one batch of maps.

    Args:
        model: the classifier.
        images: ``(B, C, H, W)`` normalised input.
        ranks: ``(B, H, W)`` tie-free maps in [0, 1] (``stats.tie_free_ranks``), so the
            percentile thresholds split the pixels exactly.
        classes: ``(B,)`` target classes.
        seed: seed of the imputation noise (the caller's random stream is left as it was).

    Returns:
        ``(B,)`` float64 scores.
    """
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    if ranks.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(
            f"ranks must be (B, H, W) for images {tuple(images.shape)}, got {tuple(ranks.shape)}"
        )
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes.tolist()]
    cams = ranks.detach().float().cpu().numpy()
    with evaluating(model), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        scores = ROADCombined(percentiles=list(PERCENTILES))(images.detach(), cams, targets, model)
    return torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
