"""The neck: the backbone's chosen levels -> torchvision's feature pyramid (one level or
several) -> optional attention on every output level, which is the other place attention
goes in a detector (the "neck placement"; e.g. a GC or non-local block over each pyramid
map).

``DetectionBody`` is what torchvision's detectors call their backbone: a module with
``out_channels`` that maps images to an ordered dict of feature maps.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork

from ...attention import AttentionSpec
from ..factory import attention_factory, identity_if_none

__all__ = ["DetectionBody"]


class DetectionBody(nn.Module):
    """Backbone, pyramid and neck attention as one module.

    Args:
        backbone: a module with ``channels`` and ``strides`` returning its stage maps.
        levels: indices of the backbone stages the detector sees, shallow to deep; one index
            is a single-level detector.
        width: channels of every pyramid level (a multiple of 32: the heads' GroupNorm).
        neck_attention: attention on each pyramid output (a name, a callable, or ``None``).
        neck_attention_options: options of a named neck attention.

    Shapes: ``(B, C, H, W) -> {"0": (B, width, H / s_0, W / s_0), ...}`` with ``s_k`` the stride
    of ``levels[k]`` (``strides``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        levels: Sequence[int],
        width: int = 64,
        neck_attention: AttentionSpec | None = None,
        neck_attention_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        stages = len(backbone.channels)
        levels = [int(i) for i in levels]
        if not levels or levels != sorted(set(levels)) or not all(0 <= i < stages for i in levels):
            raise ValueError(
                f"levels must be increasing indices of the backbone's {stages} stages (0..{stages - 1}), "
                f"got {levels}"
            )
        if width < 32 or width % 32:
            raise ValueError(f"width must be a positive multiple of 32 (the heads' GroupNorm), got {width}")
        make = identity_if_none(
            attention_factory(neck_attention, neck_attention_options, model="detection neck")
        )
        self.backbone, self.levels = backbone, levels
        self.fpn = FeaturePyramidNetwork([backbone.channels[i] for i in levels], width)
        self.neck_attn = nn.ModuleList(make(width) for _ in levels)
        self.out_channels = width
        self.strides = [backbone.strides[i] for i in levels]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        stages = self.backbone(x)
        picked = OrderedDict((str(k), stages[i]) for k, i in enumerate(self.levels))
        pyramid = self.fpn(picked)
        return OrderedDict((k, attn(v)) for (k, v), attn in zip(pyramid.items(), self.neck_attn, strict=True))
