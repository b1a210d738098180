"""Attention mechanisms for feature maps, one file (or one small family) each.

Every file of this package registers its mechanisms in ``ATTENTION`` with
``@ATTENTION.register(name)``; importing the package imports each file once, in name order,
so a new file is registered (and covered by the registry-wide tests) without editing this
one.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from torch import nn

from ..registry import ATTENTION
from .base import FAMILIES, AttentionModule
from .mhsa import MultiHeadSelfAttention2d, SelfAttention

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    importlib.import_module(f"{__name__}.{_info.name}")

AttentionSpec = str | Callable[[int], nn.Module]

__all__ = [
    "ATTENTION",
    "FAMILIES",
    "AttentionModule",
    "AttentionSpec",
    "MultiHeadSelfAttention2d",
    "SelfAttention",
    "create_attention",
    "list_attention",
]


def create_attention(attention: AttentionSpec, channels: int, **options: Any) -> nn.Module:
    """Build an attention module for ``channels``-wide feature maps.

    Args:
        attention: a registered name (see ``list_attention``) or a callable taking the
            channel count and returning a module.
        channels: width C of the ``(B, C, H, W)`` input.
        **options: keyword options of the mechanism; unknown ones raise ``TypeError``.

    Example:
        >>> create_attention("mhsa", 64, heads=8)
        MultiHeadSelfAttention2d(channels=64, heads=8, head_dim=8, pos='sine')...
    """
    if isinstance(attention, str):
        return ATTENTION.get(attention)(channels, **options)
    if callable(attention):
        if options:
            raise ValueError("options are only accepted with a registered attention name")
        return attention(channels)
    raise ValueError(f"attention must be a registered name or a callable, got {attention!r}")


def list_attention(family: str | None = None) -> list[str]:
    """Registered attention names, optionally only those of one ``family``."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    return [n for n in ATTENTION.names() if family is None or ATTENTION.get(n).family == family]
