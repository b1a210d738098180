"""A tiny timm Swin shared by the recording and explanation tests (this folder is on the
import path under pytest): 40x56 inputs with 3x3 windows give padded and shifted windows and
an odd patch merge (token grids 10x14, 5x7, 3x4, 2x2)."""

from __future__ import annotations

import timm
from torch import nn

SIZE = (40, 56)


def tiny_timm_swin(num_classes: int, depths: tuple[int, int, int, int]) -> nn.Module:
    """Random weights, 24 channels, 1-2-2-4 heads; eval mode."""
    return timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        num_classes=num_classes,
        img_size=SIZE,
        window_size=3,
        depths=depths,
        embed_dim=24,
        num_heads=(1, 2, 2, 4),
    ).eval()
