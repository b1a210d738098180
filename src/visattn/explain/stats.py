"""The statistics of the scorecard: tie-free rankings of maps, rank correlation between two
maps of the same images, and paired intervals of one method's margin over another.

- Ties in a map (a flat region, a baseline's plateau) are broken by a seeded random order,
  as if a vanishing seeded jitter were added, so that every score below sees one strict
  ranking of the pixels and the same seed gives the same numbers bit for bit.
- Intervals are paired Student t-intervals over images: the per-image differences
  ``d_i = a_i - b_i`` give ``mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n)``. The pairing matters:
  both methods are scored on the same images, so the image-to-image spread they share
  cancels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .metrics import relevance_order


def tie_free_ranks(heat: Tensor, *, seed: int = 0) -> Tensor:
    """``(B, H, W)`` maps -> ``(B, H, W)`` float ranks in [0, 1] (1 = most relevant) with ties
    broken in a seeded random order: the same pixel order as the map, strict.

    Every image uses the same tie-breaking permutation, so two equal maps get equal ranks.

    Example:
        >>> tie_free_ranks(torch.tensor([[[0.0, 1.0], [1.0, 0.5]]]), seed=0).flatten().tolist()
        [0.0, 1.0, 0.666..., 0.333...]  # the two 1.0 pixels in the seed's order
    """
    b, h, w = heat.shape
    n = h * w
    order = relevance_order(heat, seed=seed)  # (B, H*W) most relevant first
    descending = torch.arange(n - 1, -1, -1, dtype=torch.float64, device=heat.device).expand(b, n)
    ranks = torch.empty(b, n, dtype=torch.float64, device=heat.device).scatter_(1, order, descending)
    return (ranks / max(n - 1, 1)).view(b, h, w)


def rank_correlation(ranks_a: Tensor, ranks_b: Tensor) -> Tensor:
    """Spearman's rank correlation per image between two tie-free rankings ``(B, H, W)`` of
    the same pixels (``tie_free_ranks``) -> ``(B,)``: the Pearson correlation of the ranks."""
    a = ranks_a.flatten(1).double()
    b = ranks_b.flatten(1).double()
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(torch.finfo(torch.float64).tiny)


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided 95 % interval."""

    mean: float
    low: float
    high: float

    def as_dict(self, digits: int = 6) -> dict[str, float | None]:
        """Rounded to ``digits``; a bound that cannot be estimated (one image) is ``None``."""
        return {k: None if math.isnan(v) else round(v, digits) for k, v in vars(self).items()}


def mean_interval(values: Tensor, *, level: float = 0.95) -> Interval:
    """Student t-interval of the mean of ``values`` ``(n,)``; with one value the interval is
    that value (no spread can be estimated) and ``low``/``high`` are NaN.

    Example:
        >>> mean_interval(torch.tensor([1.0, 2.0, 3.0, 4.0]))  # 2.5 +- 3.182 * 0.6455
        Interval(mean=2.5, low=0.4457..., high=4.5542...)
    """
    if values.ndim != 1 or values.numel() == 0:
        raise ValueError(f"mean_interval expects a non-empty (n,) tensor, got {tuple(values.shape)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = values.double()
    n = d.numel()
    mean = float(d.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan)
    from scipy.stats import t as student_t  # imported here: scipy.stats is slow to load

    half = float(student_t.ppf(0.5 + level / 2, n - 1)) * float(d.std(correction=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half)


def paired_margin(method: Tensor, baseline: Tensor, *, higher_is_better: bool) -> Interval:
    """Paired 95 % interval of how much ``method`` beats ``baseline`` on the same images
    (``(n,)`` per-image scores each): ``method - baseline`` when higher scores are better,
    ``baseline - method`` when lower ones are (deletion), so a positive margin always means
    better than the baseline."""
    if method.shape != baseline.shape:
        raise ValueError(
            f"paired scores must have the same shape, got {tuple(method.shape)} and {tuple(baseline.shape)}"
        )
    diff = method.double() - baseline.double()
    return mean_interval(diff if higher_is_better else -diff)
