"""Detection backbones: networks that return one feature map per stage, with attention where
the detection papers put it.

- ``conv``: AttentionCNN's stem as a backbone -- conv-BN-ReLU stages (32-64-128 wide, each
  halving the map), attention after the stages ``attention_stages`` selects (the last by
  default, where AttentionCNN attends).
- ``resnet18`` ... ``resnet152``: visattn's ResNet (torchvision's network exactly) with any
  registered attention in the stages and at the position mmdetection's ResNet ``plugins``
  use: ``"end"`` of the residual branch (mmdetection's ``after_conv3``, GCNet's place, Cao et
  al. 2019, arXiv:1904.11492, with stages ``(False, True, True, True)``) or ``"inner"``, after
  the strided 3x3 convolution (``after_conv2``, where mmdetection's configurations put
  generalized attention, Zhu et al. 2019, arXiv:1904.05873).
- ``timm:<name>``: any timm network built with ``features_only=True``, attention placed by
  ``insert_attention`` (its default placement for that network).

Every backbone has ``channels`` and ``strides`` (one entry per stage) and returns the list of
stage maps; the neck (``necks.py``) picks the levels the detector uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from ..._checks import check_int
from ...attention import AttentionSpec
from ...registry import MODELS
from ..attention_cnn import _conv_bn_relu
from ..factory import attention_factory, identity_if_none
from ..resnet import POSITIONS, ResNet
from ..surgery import insert_attention

__all__ = ["BACKBONES", "ConvBackbone", "ResNetBackbone", "TimmBackbone", "build_backbone"]


def _stages_flags(stages: Sequence[bool] | None, count: int, default: Sequence[bool]) -> tuple[bool, ...]:
    flags = tuple(default if stages is None else stages)
    if len(flags) != count or not all(isinstance(f, bool) for f in flags):
        raise ValueError(f"attention_stages must be {count} booleans (one per stage), got {stages!r}")
    return flags


class ConvBackbone(nn.Module):
    """Conv-BN-ReLU stages with attention after the selected ones.

    Args:
        in_channels: image channels.
        widths: output channels of each stage.
        strides: stride of each stage.
        attention: a registered name, a callable ``channels -> module``, or ``None``.
        attention_options: options of a named attention.
        attention_stages: one flag per stage (default: the last stage only).

    Shapes: ``(B, in_channels, H, W) -> [(B, widths[i], H / s_i, W / s_i)]`` with ``s_i`` the
    product of the first ``i + 1`` strides (ceil division).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        widths: Sequence[int] = (32, 64, 128),
        strides: Sequence[int] = (2, 2, 2),
        attention: AttentionSpec | None = None,
        attention_options: dict[str, Any] | None = None,
        attention_stages: Sequence[bool] | None = None,
    ) -> None:
        super().__init__()
        if not widths or len(widths) != len(strides):
            raise ValueError(
                f"widths and strides must be non-empty and of equal length, got {widths}, {strides}"
            )
        flags = _stages_flags(attention_stages, len(widths), [False] * (len(widths) - 1) + [True])
        make = identity_if_none(attention_factory(attention, attention_options, model="conv backbone"))
        chans = [check_int("in_channels", in_channels), *(check_int("widths", w) for w in widths)]
        self.stages = nn.ModuleList(
            _conv_bn_relu(chans[i], chans[i + 1], check_int("strides", s)) for i, s in enumerate(strides)
        )
        self.attn = nn.ModuleList(make(w) if f else nn.Identity() for w, f in zip(widths, flags, strict=True))
        self.channels, self.strides = list(widths), [math.prod(strides[: i + 1]) for i in range(len(strides))]

    def forward(self, x: Tensor) -> list[Tensor]:
        out = []
        for stage, attn in zip(self.stages, self.attn, strict=True):
            x = attn(stage(x))
            out.append(x)
        return out


class ResNetBackbone(nn.Module):
    """visattn's ResNet without its classifier; returns the maps of its four stages (strides
    4, 8, 16, 32).

    Args:
        depth: ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101`` or ``resnet152``.
        in_channels, attention, attention_options: as for the ResNet.
        attention_stages: one flag per stage (default ``(False, True, True, True)``, mmdetection's
            GCNet placement).
        attention_position: ``"end"`` or ``"inner"`` (see the module's docstring).
    """

    def __init__(
        self,
        depth: str,
        in_channels: int,
        *,
        attention: AttentionSpec | None = None,
        attention_options: dict[str, Any] | None = None,
        attention_stages: Sequence[bool] | None = None,
        attention_position: str = "end",
    ) -> None:
        super().__init__()
        if attention_position not in POSITIONS:
            raise ValueError(
                f"attention_position must be one of {', '.join(POSITIONS)}, got {attention_position!r}"
            )
        flags = _stages_flags(attention_stages, 4, (False, True, True, True))
        net: ResNet = MODELS.get(depth)(
            num_classes=1,
            in_channels=in_channels,
            attention=attention,
            attention_options=attention_options,
            attention_stages=flags,
            attention_position=attention_position,
        )
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layers = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        expansion = net.num_features // 512
        self.channels, self.strides = [c * expansion for c in (64, 128, 256, 512)], [4, 8, 16, 32]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = []
        for layer in self.layers:
            x = layer(x)
            out.append(x)
        return out


class TimmBackbone(nn.Module):
    """A timm network with ``features_only=True`` (random weights: nothing is downloaded),
    attention inserted at ``insert_attention``'s default places for it."""

    def __init__(
        self,
        name: str,
        in_channels: int,
        *,
        attention: AttentionSpec | None = None,
        attention_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        import timm

        try:
            self.body = timm.create_model(name, pretrained=False, features_only=True, in_chans=in_channels)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"timm cannot build {name!r} as a feature backbone: {err}") from None
        if attention is not None:
            insert_attention(self.body, attention, attention_options=attention_options or None)
        self.channels, self.strides = (
            list(self.body.feature_info.channels()),
            list(self.body.feature_info.reduction()),
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.body(x))


BACKBONES = ("conv", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "timm:<name>")


def build_backbone(
    name: str,
    in_channels: int,
    *,
    attention: AttentionSpec | None,
    attention_options: dict[str, Any] | None,
    attention_stages: Sequence[bool] | None,
    attention_position: str,
    options: dict[str, Any] | None = None,
) -> nn.Module:
    """The backbone ``name`` (one of ``BACKBONES``); ``options`` go to the conv backbone
    (``widths``, ``strides``)."""
    options = dict(options or {})
    if name == "conv":
        if attention_position != "end":
            raise ValueError("the conv backbone has no residual branch: attention_position must be 'end'")
        return ConvBackbone(
            in_channels,
            attention=attention,
            attention_options=attention_options,
            attention_stages=attention_stages,
            **options,
        )
    if options:
        raise ValueError(f"backbone_options are for the conv backbone only, got {sorted(options)} for {name}")
    if name.startswith("resnet") and name in MODELS:
        return ResNetBackbone(
            name,
            in_channels,
            attention=attention,
            attention_options=attention_options,
            attention_stages=attention_stages,
            attention_position=attention_position,
        )
    if name.startswith("timm:"):
        if attention_stages is not None or attention_position != "end":
            raise ValueError(
                "timm backbones place attention with insert_attention: leave attention_stages "
                "and attention_position unset"
            )
        return TimmBackbone(
            name.removeprefix("timm:"), in_channels, attention=attention, attention_options=attention_options
        )
    raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")
