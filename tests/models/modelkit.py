"""Helpers shared by the model tests (this folder is on the import path under pytest)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def one_training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lr: float) -> None:
    """One SGD step on ``(x, y)``: every parameter gets a finite gradient and the loss on the
    same batch goes down."""
    model.train()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient: {missing}"
    torch.optim.SGD(model.parameters(), lr=lr).step()
    with torch.no_grad():
        assert F.cross_entropy(model(x), y) < loss
