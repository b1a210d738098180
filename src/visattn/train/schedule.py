"""Learning-rate schedules as per-step factors for ``torch.optim.lr_scheduler.LambdaLR``
(plain functions of the step, so a resumed run recomputes them exactly)."""

from __future__ import annotations

import math
from collections.abc import Callable


def warmup_cosine(total: int, warmup: int) -> Callable[[int], float]:
    """Linear warm-up to the peak rate over ``warmup`` steps, then cosine decay to zero
    (Loshchilov & Hutter 2017, arXiv:1608.03983, without restarts)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def warmup_step(steps_per_epoch: int, warmup: int, every: int, gamma: float) -> Callable[[int], float]:
    """Linear warm-up, then the rate times ``gamma`` every ``every`` epochs."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return gamma ** (step // (every * steps_per_epoch))

    return factor
