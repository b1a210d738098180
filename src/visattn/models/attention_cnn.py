"""AttentionCNN: a convolutional stem, self-attention across spatial positions, pooling and a
linear classifier -- the classic tutorial network, done right.

The tutorial version flattens its 64-channel feature map to (B, 64, H*W) and applies 64-wide
projections to the last axis, so it attends across channels and only runs on 8x8 inputs.
Here attention runs across the H*W positions (any input size >= 1x1), the stem downsamples
so that attention sees a grid it can afford, and ``attention=None`` gives the identical
network without attention for fair comparisons.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from .._checks import check_float, check_int
from ..attention import AttentionSpec, create_attention
from ..registry import MODELS


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


@MODELS.register("attention_cnn")
class AttentionCNN(nn.Module):
    """Conv stem -> attention over positions -> global mean pool -> linear head.

    Args:
        num_classes: number of output logits.
        in_channels: channels of the input images (1 for grey, 3 for colour).
        attention: a registered attention name, a callable ``channels -> module``, or
            ``None`` for the same network without attention.
        attention_options: keyword options for a named attention (e.g. ``{"heads": 8}``).
        widths: output channels of each 3x3 conv-BN-ReLU stage of the stem.
        strides: stride of each stage; the product is the total downsampling.
        drop_rate: dropout before the classifier while training.

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
        strides: Sequence[int] = (2, 2, 1),
        drop_rate: float = 0.0,
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
        if attention is None:
            if attention_options:
                raise ValueError("attention_options given but attention is None")
            self.attn: nn.Module = nn.Identity()
        else:
            self.attn = create_attention(attention, self.num_features, **(attention_options or {}))
        self.drop = nn.Dropout(check_float("drop_rate", drop_rate, low=0.0, high=1.0))
        self.head = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, in_channels, H, W) -> (B, C, H', W')``: the attended feature map."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"AttentionCNN expects input of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        return self.attn(self.stem(x))

    def forward_head(self, x: Tensor) -> Tensor:
        """``(B, C, H', W') -> (B, num_classes)``: mean over positions, then the classifier."""
        return self.head(self.drop(x.mean(dim=(2, 3))))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
