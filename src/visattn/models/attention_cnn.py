"""AttentionCNN: a convolutional stem, self-attention across spatial positions, pooling and a
linear classifier -- the classic tutorial network, done right.

The tutorial version flattens its 64-channel feature map to (B, 64, H*W) and applies 64-wide
projections to the last axis, so it attends across channels and only runs on 8x8 inputs.
Here attention runs across the H*W positions (any input size >= 1x1), the stem downsamples
so that attention sees a grid it can afford, and ``attention=None`` gives the identical
network without attention for fair comparisons.

The attention grid is bounded (``max_tokens``, see ``AttentionCNN``): a global attention's cost
grows with the square of the number of positions, which the stem alone leaves growing with
the input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_float, check_int
from ..attention import AttentionSpec
from ..registry import MODELS
from .factory import attention_factory, identity_if_none


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


@MODELS.register("attention_cnn")
class AttentionCNN(nn.Module):
    """Conv stem -> (pooling to at most ``max_tokens`` positions) -> attention over positions
    -> global mean pool -> linear head.

    Args:
        num_classes: number of output logits.
        in_channels: channels of the input images (1 for grey, 3 for colour).
        attention: a registered attention name, a callable ``channels -> module``, or
            ``None`` for the same network without attention.
        attention_options: keyword options for a named attention (e.g. ``{"heads": 8}``).
        widths: output channels of each 3x3 conv-BN-ReLU stage of the stem.
        strides: stride of each stage; the product is the total downsampling.
        drop_rate: dropout before the classifier while training.
        max_tokens: the most positions the attention sees (``None``: no bound). When the
            stem's ``H' x W'`` grid holds more, it is average-pooled by the smallest integer
            factor f with ``ceil(H'/f) * ceil(W'/f) <= max_tokens`` (kernel = stride = f;
            partial windows at the bottom and right average the positions they hold) before
            the attention, and the classifier pools that attended map. With the default stem
            (total stride 8) the default 256 leaves every input up to 128 x 128 px unchanged
            (the 60 px main job: 8 x 8 = 64) and brings 224 px (28 x 28 = 784 positions) to
            14 x 14.
            The pooling belongs to the network: ``attention=None`` pools the same way.

    Shapes: ``(B, in_channels, H, W) -> (B, num_classes)`` for any H, W >= 1.

    Example:
        >>> model = AttentionCNN(10, in_channels=1)
        >>> model(torch.randn(2, 1, 60, 60)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_classes: int = 10,
        *,
        in_channels: int = 3,
        attention: AttentionSpec | None = "mhsa",
        attention_options: dict[str, Any] | None = None,
        widths: Sequence[int] = (32, 64, 64),
        strides: Sequence[int] = (2, 2, 2),
        drop_rate: float = 0.0,
        max_tokens: int | None = 256,
    ) -> None:
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes)
        self.in_channels = check_int("in_channels", in_channels)
        if not widths or len(widths) != len(strides):
            raise ValueError(
                f"widths and strides must be non-empty and of equal length, got {list(widths)} "
                f"and {list(strides)}"
            )
        for i, (w, s) in enumerate(zip(widths, strides, strict=True)):
            check_int(f"widths[{i}]", w)
            check_int(f"strides[{i}]", s)
        chans = [in_channels, *widths]
        self.stem = nn.Sequential(*(_conv_bn_relu(chans[i], chans[i + 1], s) for i, s in enumerate(strides)))
        self.num_features = widths[-1]
        self.max_tokens = None if max_tokens is None else check_int("max_tokens", max_tokens)
        make = identity_if_none(attention_factory(attention, attention_options, model="AttentionCNN"))
        self.attn = make(self.num_features)
        self.drop = nn.Dropout(check_float("drop_rate", drop_rate, low=0.0, high=1.0))
        self.head = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, in_channels, H, W) -> (B, C, H', W')``: the attended feature map (on the
        bounded grid)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"AttentionCNN expects input of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        return self.attn(self.bound(self.stem(x)))

    def pool_factor(self, height: int, width: int) -> int:
        """The pooling factor for a stem grid of ``height x width`` (1: no pooling)."""
        if self.max_tokens is None or height * width <= self.max_tokens:
            return 1
        # Start from the real-valued bound sqrt(HW / max_tokens); ceil effects may need more.
        f = max(2, math.floor(math.sqrt(height * width / self.max_tokens)))
        while math.ceil(height / f) * math.ceil(width / f) > self.max_tokens:
            f += 1
        return f

    def bound(self, x: Tensor) -> Tensor:
        """``(B, C, H', W') -> (B, C, ceil(H'/f), ceil(W'/f))``, f = ``pool_factor(H', W')``."""
        f = self.pool_factor(x.shape[-2], x.shape[-1])
        return x if f == 1 else F.avg_pool2d(x, f, f, ceil_mode=True, count_include_pad=False)

    def forward_head(self, x: Tensor) -> Tensor:
        """``(B, C, H', W') -> (B, num_classes)``: mean over positions, then the classifier."""
        return self.head(self.drop(x.mean(dim=(2, 3))))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
