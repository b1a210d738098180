"""BoTNet: a ResNet whose last stage mixes with self-attention. Srinivas et al., CVPR 2021,
"Bottleneck Transformers for Visual Recognition", arXiv:2101.11605.

A ResNet-50-like network (7x7 stem and max pooling, bottleneck stages of 1x1 - 3x3 - 1x1
convolutions with BatchNorm, stride on the 3x3 as in torchvision's ResNet v1.5) in which every
block of the last stage replaces its 3x3 convolution by multi-head self-attention over all
positions with 2-D relative position logits (visattn's ``"bot"``: 4 heads, no Q/K/V bias, no
output projection, position logits scaled with the content logits). In the first block of that
stage the stride is a 2x2 average pooling after the attention, as in the paper.

Deviations from the paper:
- The pooling rounds up (``ceil_mode``), so that odd maps keep the size of the strided 1x1
  shortcut; at even sizes it is the paper's 2x2 pooling.
- The relative tables hold offsets up to ``max_distance=31`` (see ``visattn.attention.bot``):
  the paper's unclipped form at every map up to 32x32, and any size beyond.

``attention=None`` gives the same network with the 3x3 convolutions, i.e. ResNet-50 for
``botnet50`` (checked against torchvision's ``resnet50`` with the same weights); another registered
attention or a callable ``channels -> module`` takes the place of the 3x3 convolution instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from .._checks import check_float, check_int
from ..attention import AttentionSpec
from ..registry import MODELS
from .factory import attention_factory

__all__ = ["BoTNet", "Bottleneck", "botnet26", "botnet50"]


class Bottleneck(nn.Module):
    """ResNet bottleneck; with a ``mixer``, a BoT block.

    ``relu(bn3(conv3(relu(bn2(mix(relu(bn1(conv1(x)))))))) + shortcut(x))`` where ``mix`` is a
    3x3 convolution with the block's stride (``mixer=None``) or ``pool(mixer(.))``, the pooling
    being 2x2 average pooling when the stride is 2.

    Args:
        in_channels: input width.
        width: inner width; the output is ``4 * width``.
        stride: 1 or 2.
        mixer: the attention module replacing the 3x3 convolution, or ``None``.

    Shapes: ``(B, in_channels, H, W) -> (B, 4 * width, ceil(H / stride), ceil(W / stride))``.
    """

    expansion = 4

    def __init__(
        self, in_channels: int, width: int, stride: int = 1, *, mixer: nn.Module | None = None
    ) -> None:
        super().__init__()
        out = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        if mixer is None:
            self.conv2: nn.Module | None = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
            self.attn: nn.Module | None = None
        else:
            self.conv2, self.attn = None, mixer
        # ceil_mode: an odd side keeps the size of the strided 1x1 shortcut (partial windows average
        # over the positions they hold).
        use_pool = mixer is not None and stride == 2
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if use_pool else nn.Identity()
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_channels, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
            if stride != 1 or in_channels != out
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))  # (B, width, H, W)
        y = self.conv2(y) if self.conv2 is not None else self.pool(self.attn(y))  # (B, width, H/s, W/s)
        y = self.bn3(self.conv3(self.relu(self.bn2(y))))  # (B, 4 width, H/s, W/s)
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class BoTNet(nn.Module):
    """ResNet stem and stages; the last stage's blocks are BoT blocks.

    Args:
        num_classes: number of output logits.
        in_channels: channels of the input images.
        layers: blocks per stage (``(3, 4, 6, 3)`` for BoT50).
        base_width: inner width of the first stage (and the stem's output); doubles per stage.
        attention: ``"bot"`` (default, 4 heads), another registered attention name or a callable
            ``channels -> module`` in place of the last stage's 3x3 convolutions, or ``None``
            to keep the convolutions (a plain ResNet).
        attention_options: keyword options of the named attention (e.g.
            ``{"max_distance": 15}``); they update the model's defaults ``heads=4,
            residual=False``, which reach every mechanism that has those options (a mixer in
            place of a convolution does not add its own input).
        drop_rate: dropout before the classifier while training.

    Shapes: ``(B, in_channels, H, W) -> (B, num_classes)`` for any H, W >= 1.

    Example:
        >>> model = botnet26(num_classes=10)
        >>> model(torch.randn(2, 3, 64, 48)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        in_channels: int = 3,
        layers: Sequence[int] = (3, 4, 6, 3),
        base_width: int = 64,
        attention: AttentionSpec | None = "bot",
        attention_options: Mapping[str, Any] | None = None,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes)
        self.in_channels = check_int("in_channels", in_channels)
        check_int("base_width", base_width)
        if not layers:
            raise ValueError("layers must hold at least one stage, got an empty sequence")
        for i, n in enumerate(layers):
            check_int(f"layers[{i}]", n)
        factory = attention_factory(
            attention, attention_options, model="BoTNet", defaults={"heads": 4, "residual": False}
        )

        def mixer(width: int) -> nn.Module | None:
            return None if factory is None else factory(width)

        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, base_width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(base_width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.stages = nn.ModuleList()
        cin = base_width
        for s, n in enumerate(layers):
            width = base_width * 2**s
            last = s == len(layers) - 1
            blocks = []
            for i in range(n):
                stride = 2 if s > 0 and i == 0 else 1
                blocks.append(Bottleneck(cin, width, stride, mixer=mixer(width) if last else None))
                cin = width * Bottleneck.expansion
            self.stages.append(nn.Sequential(*blocks))
        self.num_features = cin
        self.drop = nn.Dropout(check_float("drop_rate", drop_rate, low=0.0, high=1.0))
        self.head = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, in_channels, H, W) -> (B, num_features, H', W')``, ``H' = ceil(H / 32)`` for four
        stages."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            expected = f"(B, {self.in_channels}, H, W)"
            raise ValueError(f"BoTNet expects input of shape {expected}, got {tuple(x.shape)}")
        x = self.stem(x)  # (B, base_width, H/4, W/4)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x: Tensor) -> Tensor:
        """``(B, num_features, H', W') -> (B, num_classes)``: mean over positions, then the head."""
        return self.head(self.drop(x.mean(dim=(2, 3))))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


@MODELS.register("botnet50")
def botnet50(
    num_classes: int = 1000, *, in_channels: int = 3, attention: AttentionSpec | None = "bot", **options: Any
) -> BoTNet:
    """BoT50: ResNet-50 with BoT blocks in its last stage (20.8 M parameters at 1000 classes)."""
    return BoTNet(num_classes, in_channels=in_channels, layers=(3, 4, 6, 3), attention=attention, **options)


@MODELS.register("botnet26")
def botnet26(
    num_classes: int = 1000, *, in_channels: int = 3, attention: AttentionSpec | None = "bot", **options: Any
) -> BoTNet:
    """A 26-layer BoTNet, two blocks per stage (both blocks of the last stage are BoT blocks)."""
    return BoTNet(num_classes, in_channels=in_channels, layers=(2, 2, 2, 2), attention=attention, **options)
