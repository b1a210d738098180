"""ResNet-18 to 152 and ResNeXt-50 (32x4d) with an attention slot in every residual block.

He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
arXiv:1512.03385; Xie et al., "Aggregated Residual Transformations for Deep Neural Networks"
(ResNeXt), CVPR 2017, arXiv:1611.05431. The attention sits where SE (Hu et al. 2018,
arXiv:1709.01507, Fig. 3), CBAM (Woo et al. 2018, arXiv:1807.06521, Fig. 3), ECA and GC put
it: at the end of the residual branch, after its last BatchNorm and before the addition.

Deviations from the papers: none beyond torchvision's, which this follows exactly (the
"v1.5" bottleneck with the stride on the 3x3 convolution, the same module names and
initialisation), so that ``load_torchvision`` takes torchvision's ImageNet weights and the
network without attention computes torchvision's function. The pooled features are a mean
over positions (the same function as ``AdaptiveAvgPool2d(1)``, and ONNX-friendly).

Reference checked against: torchvision ``resnet18/50``, ``resnext50_32x4d`` (same weights,
logits within 1e-5) and timm ``resnet50`` with ``attn_layer`` se, eca, cbam (same weights,
logits within 1e-4).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_int
from ..attention import AttentionModule, AttentionSpec
from ..registry import MODELS
from .factory import attention_factory, identity_if_none
from .weights import mismatch_report

AttentionFactory = Callable[[int], nn.Module]


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)


def end_branch(attn: nn.Module, out: Tensor, shortcut: Tensor) -> Tensor:
    """``attn(out) + shortcut``; for a gate (``base * gate``, see ``AttentionModule.gated``)
    one ``addcmul``, which reads and writes the map once instead of twice."""
    gated = attn.gated(out) if isinstance(attn, AttentionModule) else None
    if gated is None:
        return attn(out) + shortcut
    return torch.addcmul(shortcut, *gated)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers; ``attn`` (identity without attention) ends the residual branch.

    Shapes: ``(B, inplanes, H, W) -> (B, planes, ceil(H / stride), ceil(W / stride))``.
    """

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, *, stride: int, attention: AttentionFactory, position: str = "end"
    ) -> None:
        super().__init__()
        self.conv1 = _conv(inplanes, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.attn, self.attn_inner = _slots(attention, position, inner=planes, end=planes)
        self.downsample = _shortcut(inplanes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.attn_inner(self.relu(self.bn1(self.conv1(x))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(end_branch(self.attn, self.bn2(self.conv2(out)), shortcut))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt, carrying the stride), 1x1 expand by 4; ``attn``
    ends the residual branch.

    Shapes: ``(B, inplanes, H, W) -> (B, 4 * planes, ceil(H / stride), ceil(W / stride))``.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        *,
        stride: int,
        attention: AttentionFactory,
        position: str = "end",
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        width = planes * width_per_group // 64 * groups
        out = planes * self.expansion
        self.conv1 = _conv(inplanes, width, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv(width, width, 3, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv(width, out, 1)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.attn, self.attn_inner = _slots(attention, position, inner=width, end=out)
        self.downsample = _shortcut(inplanes, out, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.attn_inner(self.relu(self.bn2(self.conv2(out))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(end_branch(self.attn, self.bn3(self.conv3(out)), shortcut))


POSITIONS = ("end", "inner")


def _slots(
    attention: AttentionFactory, position: str, *, inner: int, end: int
) -> tuple[nn.Module, nn.Module]:
    """``(attn, attn_inner)`` of a block: the attention at the end of the residual branch
    (``"end"``: after the last conv-BN, before the addition; mmdetection's ``after_conv3`` of
    a Bottleneck, where SE, CBAM and GC sit) or after the ReLU of the block's strided 3x3
    convolution (``"inner"``: mmdetection's ``after_conv2`` of a Bottleneck, where its
    non-local and generalized-attention plugins sit; a BasicBlock's first convolution). The
    other slot is an identity."""
    if position not in POSITIONS:
        raise ValueError(f"attention_position must be one of {', '.join(POSITIONS)}, got {position!r}")
    if position == "end":
        return attention(end), nn.Identity()
    return nn.Identity(), attention(inner)


def _shortcut(inplanes: int, out: int, stride: int) -> nn.Sequential | None:
    """Projection shortcut (1x1 conv + BN, torchvision's option B) where the shape changes."""
    if stride == 1 and inplanes == out:
        return None
    return nn.Sequential(_conv(inplanes, out, 1, stride), nn.BatchNorm2d(out))


class ResNet(nn.Module):
    """ResNet / ResNeXt with optional attention at the end of every residual branch.

    Build it through the registered names (``resnet18`` ... ``resnet152``,
    ``resnext50_32x4d``) rather than directly.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: number of blocks in each of the four stages.
        name: the model's name, used in error messages.
        num_classes: number of output logits.
        in_channels: channels of the input images (the stem convolution adapts).
        attention: a registered attention name, a callable ``channels -> module``, or
            ``None`` for the plain network (identical to torchvision's).
        attention_options: keyword options for a named attention, e.g. ``{"reduction": 16}``.
        groups: groups of the 3x3 convolutions (ResNeXt cardinality).
        width_per_group: channels per group of the 3x3 convolutions at the first stage.
        zero_init_last: start every residual branch at zero (last BN weight 0), as in Goyal
            et al. 2017; torchvision's ``zero_init_residual``.
        attention_stages: which of the four stages get attention (all by default); mmdetection's
            GC configurations use ``(False, True, True, True)``.
        attention_position: ``"end"`` (the end of the residual branch) or ``"inner"`` (after
            the block's strided 3x3 convolution); see ``_slots``.

    Shapes: ``(B, in_channels, H, W) -> (B, num_classes)`` for any H, W >= 1;
    ``forward_features`` gives ``(B, 512 * expansion, ceil(H / 32), ceil(W / 32))``.

    Example:
        >>> model = create_model("resnet50", num_classes=10, attention="se")
        >>> model(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        *,
        name: str,
        num_classes: int = 1000,
        in_channels: int = 3,
        attention: AttentionSpec | None = None,
        attention_options: dict[str, Any] | None = None,
        groups: int = 1,
        width_per_group: int = 64,
        zero_init_last: bool = False,
        attention_stages: Sequence[bool] = (True, True, True, True),
        attention_position: str = "end",
    ) -> None:
        super().__init__()
        self.name = name
        self.num_classes = check_int("num_classes", num_classes)
        self.in_channels = check_int("in_channels", in_channels)
        check_int("groups", groups)
        check_int("width_per_group", width_per_group)
        if len(layers) != 4:
            raise ValueError(f"layers must give the depth of 4 stages, got {list(layers)}")
        if block is BasicBlock and (groups, width_per_group) != (1, 64):
            raise ValueError(
                f"groups and width_per_group must be 1 and 64 with BasicBlock, got {groups}, "
                f"{width_per_group}"
            )
        if len(attention_stages) != 4 or not all(isinstance(b, bool) for b in attention_stages):
            raise ValueError(f"attention_stages must be 4 booleans, got {list(attention_stages)}")
        make_attention = identity_if_none(attention_factory(attention, attention_options, model=name))
        extra = {} if block is BasicBlock else {"groups": groups, "width_per_group": width_per_group}
        extra["position"] = attention_position
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, depth) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            stage = []
            for j in range(check_int(f"layers[{i}]", depth)):
                stride = 2 if i > 0 and j == 0 else 1
                make = make_attention if attention_stages[i] else identity_if_none(None)
                stage.append(block(inplanes, planes, stride=stride, attention=make, **extra))
                inplanes = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.num_features = inplanes
        self.fc = nn.Linear(inplanes, num_classes)
        self._init_weights(zero_init_last)

    def _init_weights(self, zero_init_last: bool) -> None:
        # torchvision's initialisation, applied only to the network's own layers so that
        # each attention module keeps the initialisation its paper prescribes.
        attention = {id(m) for b in self.blocks() for slot in (b.attn, b.attn_inner) for m in slot.modules()}
        for m in self.modules():
            if id(m) in attention:
                continue
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for b in self.blocks():
                nn.init.zeros_(b.bn3.weight if isinstance(b, Bottleneck) else b.bn2.weight)

    def blocks(self) -> list[BasicBlock | Bottleneck]:
        """The residual blocks, in forward order."""
        return [m for m in self.modules() if isinstance(m, (BasicBlock, Bottleneck))]

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, in_channels, H, W) -> (B, num_features, ceil(H / 32), ceil(W / 32))``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self.name} expects input of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: Tensor) -> Tensor:
        """``(B, num_features, H', W') -> (B, num_classes)``: mean over positions, classifier."""
        return self.fc(x.mean((2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _resnet(
    name: str,
    block: type[BasicBlock | Bottleneck],
    layers: Sequence[int],
    num_classes: int,
    attention: AttentionSpec | None,
    options: dict[str, Any],
    **arch: int,
) -> ResNet:
    return ResNet(block, layers, name=name, num_classes=num_classes, attention=attention, **arch, **options)


# Builders: ``options`` are ``ResNet``'s keyword options (in_channels, attention_options,
# zero_init_last); an unknown one raises TypeError.


@MODELS.register("resnet18")
def resnet18(num_classes: int = 1000, *, attention: AttentionSpec | None = None, **options: Any) -> ResNet:
    """ResNet-18: BasicBlocks (2, 2, 2, 2), 11.69 M parameters at 1000 classes."""
    return _resnet("resnet18", BasicBlock, (2, 2, 2, 2), num_classes, attention, options)


@MODELS.register("resnet34")
def resnet34(num_classes: int = 1000, *, attention: AttentionSpec | None = None, **options: Any) -> ResNet:
    """ResNet-34: BasicBlocks (3, 4, 6, 3), 21.80 M parameters at 1000 classes."""
    return _resnet("resnet34", BasicBlock, (3, 4, 6, 3), num_classes, attention, options)


@MODELS.register("resnet50")
def resnet50(num_classes: int = 1000, *, attention: AttentionSpec | None = None, **options: Any) -> ResNet:
    """ResNet-50: Bottlenecks (3, 4, 6, 3), 25.56 M parameters at 1000 classes."""
    return _resnet("resnet50", Bottleneck, (3, 4, 6, 3), num_classes, attention, options)


@MODELS.register("resnet101")
def resnet101(num_classes: int = 1000, *, attention: AttentionSpec | None = None, **options: Any) -> ResNet:
    """ResNet-101: Bottlenecks (3, 4, 23, 3), 44.55 M parameters at 1000 classes."""
    return _resnet("resnet101", Bottleneck, (3, 4, 23, 3), num_classes, attention, options)


@MODELS.register("resnet152")
def resnet152(num_classes: int = 1000, *, attention: AttentionSpec | None = None, **options: Any) -> ResNet:
    """ResNet-152: Bottlenecks (3, 8, 36, 3), 60.19 M parameters at 1000 classes."""
    return _resnet("resnet152", Bottleneck, (3, 8, 36, 3), num_classes, attention, options)


@MODELS.register("resnext50_32x4d")
def resnext50_32x4d(
    num_classes: int = 1000, *, attention: AttentionSpec | None = None, **options: Any
) -> ResNet:
    """ResNeXt-50 32x4d: Bottlenecks (3, 4, 6, 3) with 32 groups of 4 channels at the first
    stage, 25.03 M parameters at 1000 classes."""
    return _resnet(
        "resnext50_32x4d",
        Bottleneck,
        (3, 4, 6, 3),
        num_classes,
        attention,
        options,
        groups=32,
        width_per_group=4,
    )


@dataclass(frozen=True)
class LoadReport:
    """What ``load_torchvision`` did: the keys it loaded and the model's keys it left at
    their initialisation (the attention modules', and the classifier's with
    ``skip_head=True``)."""

    loaded: tuple[str, ...]
    new: tuple[str, ...]

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors; {len(self.new)} new (left at initialisation)"]
        lines += [f"  new: {k}" for k in self.new]
        return "\n".join(lines)


def load_torchvision(
    model: ResNet, state_dict: Mapping[str, Tensor], *, skip_head: bool = False
) -> LoadReport:
    """Load a torchvision ResNet / ResNeXt state_dict into ``model``, attention left as built.

    Every key of ``model`` outside its attention modules must be in ``state_dict`` with the
    same shape, and ``state_dict`` may hold nothing else; otherwise nothing is loaded and a
    ``ValueError`` lists the missing, unexpected and mis-shaped keys (weights of another
    depth, width or class count are refused rather than half loaded).

    Args:
        model: a model from this file (any attention).
        state_dict: e.g. ``torchvision.models.resnet50(weights=...).state_dict()``.
        skip_head: leave the classifier ``fc`` at its initialisation (and ignore the
            source's), to fine-tune for another number of classes.

    Returns:
        ``LoadReport`` naming the loaded keys and the new ones.

    Example:
        >>> model = create_model("resnet50", num_classes=1000, attention="se")
        >>> report = load_torchvision(model, torchvision.models.resnet50().state_dict())
        >>> all(".attn." in k for k in report.new)
        True
    """
    own = model.state_dict()
    blocks = [name for name, m in model.named_modules() if isinstance(m, (BasicBlock, Bottleneck))]
    fresh = tuple(f"{name}.attn." for name in blocks) + (("fc.",) if skip_head else ())
    new = tuple(k for k in own if k.startswith(fresh))
    wanted = [k for k in own if not k.startswith(fresh)]
    source = {k: v for k, v in state_dict.items() if not (skip_head and k.startswith("fc."))}
    problems = mismatch_report({k: own[k] for k in wanted}, source)
    if problems:
        raise ValueError(
            f"state_dict does not fit {model.name} (num_classes={model.num_classes}, "
            f"in_channels={model.in_channels}): " + "; ".join(problems)
        )
    model.load_state_dict({k: source[k] for k in wanted}, strict=False)
    return LoadReport(loaded=tuple(wanted), new=new)
