"""Models built from visattn attention, all registered in ``MODELS``."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from ..registry import MODELS, Registry
from . import botnet, swin, vit  # noqa: F401  (importing registers their models)
from .attention_cnn import AttentionCNN
from .factory import attention_factory
from .resnet import ResNet, load_torchvision
from .surgery import InsertionReport, insert_attention
from .weights import load_timm_vit, load_torchvision_vit

__all__ = [
    "MODELS",
    "AttentionCNN",
    "InsertionReport",
    "ResNet",
    "attention_factory",
    "create_model",
    "default_attention",
    "insert_attention",
    "list_models",
    "load_timm_vit",
    "load_torchvision",
    "load_torchvision_vit",
    "resolved_options",
]


def create_model(name: str, *, num_classes: int, in_channels: int = 3, **options: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: a registered model name (see ``list_models``).
        num_classes: number of output logits.
        in_channels: channels of the input images.
        **options: the model's keyword options; the common ones are ``attention``, a
            registered attention name (one meaning in every model; a model whose blocks mix
            tokens builds the mechanism's token form), a callable ``channels -> module``, or
            ``None`` for the network without attention (``ValueError`` saying why where the
            architecture has none, e.g. a ViT reading its class token), and
            ``attention_options``, the named mechanism's keyword options. Both go through
            ``visattn.models.factory.attention_factory``. Left out, the model's default is used.

    Example:
        >>> create_model("attention_cnn", num_classes=10, in_channels=1, attention="mhsa")
    """
    return MODELS.get(name)(num_classes=num_classes, in_channels=in_channels, **options)


def default_attention(name: str, *, registry: Registry = MODELS) -> str:
    """The attention a registered model uses when none is asked for: a mechanism name,
    ``"none"``, or ``"built in"`` for models whose builder takes no ``attention`` option."""
    try:
        default = inspect.signature(registry.get(name)).parameters["attention"].default
    except (KeyError, TypeError, ValueError):
        return "built in"
    if default is None:
        return "none"
    return default if isinstance(default, str) else "built in"


def resolved_options(name: str, options: dict[str, Any], *, registry: Registry = MODELS) -> dict[str, Any]:
    """``options`` plus every other option of the model's builder at its current default,
    where the default is plain data (numbers, strings, None, tuples): what a checkpoint
    stores, so that a later change of a default cannot rebuild a different network from it.
    ``registry`` holds the builder (``MODELS``; detectors: ``DETECTORS``).

    Example:
        >>> resolved_options("attention_cnn", {"attention": "cbam"})["strides"]
        (2, 2, 2)
    """
    params = inspect.signature(registry.get(name)).parameters
    resolved = dict(options)
    for key, param in params.items():
        if (
            key in resolved
            or key in ("num_classes", "in_channels")
            or param.default is inspect.Parameter.empty
        ):
            continue
        if _plain(param.default):
            resolved[key] = param.default
    return resolved


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, (tuple, list)) and all(_plain(v) for v in value)


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return MODELS.names()
