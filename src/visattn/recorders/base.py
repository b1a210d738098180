"""What every third-party adapter shares: the sink type, patching and the token layout."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import MethodType

from torch import nn

Sink = Callable[..., None]
Restore = Callable[[], None]


@dataclass(frozen=True)
class TokenLayout:
    """How a transformer's token sequence maps onto the image.

    Attributes:
        grid: ``(h, w)`` patch grid of the model's configured input size.
        prefix: number of leading tokens that are not patches (class, distillation and
            register tokens).
    """

    grid: tuple[int, int]
    prefix: int

    def grid_for(self, tokens: int) -> tuple[int, int] | None:
        """The patch grid when ``tokens`` matches it; ``None`` for another input size."""
        return self.grid if tokens == self.prefix + math.prod(self.grid) else None


def _timm_layout(module: nn.Module) -> TokenLayout | None:
    embed = getattr(module, "patch_embed", None)
    grid = getattr(embed, "grid_size", None)
    prefix = getattr(module, "num_prefix_tokens", None)
    if grid is None or not isinstance(prefix, int):
        return None
    return TokenLayout((int(grid[0]), int(grid[1])), prefix)


def _torchvision_layout(module: nn.Module) -> TokenLayout | None:
    # torchvision's VisionTransformer: a square image, one class token in front.
    size, patch = getattr(module, "image_size", None), getattr(module, "patch_size", None)
    if getattr(module, "class_token", None) is None or not (isinstance(size, int) and isinstance(patch, int)):
        return None
    return TokenLayout((size // patch, size // patch), 1)


def token_layouts(model: nn.Module) -> dict[str, TokenLayout]:
    """Qualified name -> the token layout of the nearest enclosing vision transformer."""
    found: dict[str, TokenLayout] = {}
    for name, module in model.named_modules():
        layout = _timm_layout(module) or _torchvision_layout(module)
        if layout is None:
            continue
        for sub, _ in module.named_modules(prefix=name):
            found[sub] = layout
    return found


def patch_method(module: nn.Module, attr: str, function: Callable[..., object]) -> Restore:
    """Bind ``function`` as ``module.<attr>`` on this instance only; return the undo."""
    had_own = attr in module.__dict__
    previous = module.__dict__.get(attr)
    setattr(module, attr, MethodType(function, module))

    def restore() -> None:
        if had_own:
            setattr(module, attr, previous)
        else:
            delattr(module, attr)

    return restore


def uses_own(module: nn.Module, cls: type, attr: str = "forward") -> bool:
    """``module`` is a ``cls`` whose ``attr`` is ``cls``'s (a subclass may change the maths)."""
    return isinstance(module, cls) and getattr(type(module), attr) is getattr(cls, attr)
