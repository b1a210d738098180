"""The residual blocks ``insert_attention`` knows, and where each one's residual branch ends.

The one table of these blocks: ``insert_attention`` chooses them when no ``where=`` is given,
and puts attention at their branch end (before the addition, where SE, CBAM and ECA sit).
"""

from __future__ import annotations

from torch import nn

__all__ = ["BRANCH_ENDS", "branch_end", "known_block"]

#: Residual blocks by qualified class name -> (attribute ending the residual branch, how):
#: "wrap" wraps that submodule; "slot" fills that attribute (None or Identity; an occupied
#: slot is wrapped instead). Subclasses inherit their base's entry.
BRANCH_ENDS: dict[str, tuple[str, str]] = {
    "torchvision.models.resnet.BasicBlock": ("bn2", "wrap"),
    "torchvision.models.resnet.Bottleneck": ("bn3", "wrap"),
    "torchvision.models.mobilenetv2.InvertedResidual": ("conv", "wrap"),
    "torchvision.models.mobilenetv3.InvertedResidual": ("block", "wrap"),
    "torchvision.models.efficientnet.MBConv": ("block", "wrap"),
    "torchvision.models.efficientnet.FusedMBConv": ("block", "wrap"),
    "torchvision.models.convnext.CNBlock": ("block", "wrap"),
    "torchvision.models.regnet.ResBottleneckBlock": ("f", "wrap"),
    "timm.models.resnet.BasicBlock": ("se", "slot"),
    "timm.models.resnet.Bottleneck": ("se", "slot"),
    "timm.models._efficientnet_blocks.DepthwiseSeparableConv": ("bn2", "wrap"),
    "timm.models._efficientnet_blocks.InvertedResidual": ("bn3", "wrap"),
    "timm.models._efficientnet_blocks.EdgeResidual": ("bn2", "wrap"),
    "timm.models.regnet.Bottleneck": ("conv3", "wrap"),
    "visattn.models.resnet.BasicBlock": ("attn", "slot"),
    "visattn.models.resnet.Bottleneck": ("attn", "slot"),
}


def branch_end(module: nn.Module) -> tuple[str, str] | None:
    """``module``'s entry in ``BRANCH_ENDS`` (its class's or a base class's), or None."""
    for cls in type(module).__mro__:
        entry = BRANCH_ENDS.get(f"{cls.__module__}.{cls.__qualname__}")
        if entry is not None:
            return entry
    return None


def known_block(name: str, module: nn.Module) -> bool:
    """Whether ``module`` is a residual block listed in ``BRANCH_ENDS`` (a ``where=`` predicate)."""
    return branch_end(module) is not None
