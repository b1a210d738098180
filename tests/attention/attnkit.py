"""Helpers shared by the mechanism tests (this folder is on the import path under pytest)."""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def perturbed(module: M, *, seed: int | None = None, scale: float = 0.2) -> M:
    """Move ``module`` away from its initialisation, in place, and return it in eval mode.

    Zero-initialised gates and unit BatchNorm statistics hide mistakes (a wrong branch that
    multiplies by exactly 1 or adds exactly 0 still passes), so every parameter gets Gaussian
    noise of std ``scale`` and every BatchNorm new running statistics. ``seed`` fixes the noise.
    """
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return module.eval()
