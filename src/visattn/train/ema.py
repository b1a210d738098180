"""Exponential moving average of model weights (Polyak & Juditsky 1992), as in timm's
ModelEmaV2: after each optimizer step every floating-point entry of the state_dict (weights
and BatchNorm statistics) moves to ``decay * ema + (1 - decay) * current``; integer buffers
are copied."""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEma:
    """Keeps an averaged copy of ``model`` (no gradients, eval mode)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        own = self.module.state_dict()
        for name, value in model.state_dict().items():
            target = own[name]
            if target.is_floating_point():
                target.lerp_(value.detach().to(target.dtype), 1.0 - self.decay)
            else:
                target.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
