"""Recording the attention of third-party modules (timm, torchvision, PyTorch).

Their fused kernels never expose the weights, so while ``record_attention`` is active each
supported module gets an instance-level ``forward`` (for timm's Swin block, ``_attn``) that
computes the same attention explicitly from the module's own weights through
``visattn.functional.attention`` and hands the weights to the recorder. The replacement is
removed when the block exits, so the module's class and its fused path are untouched.

Each adapter is a function ``(module, name, sink_for, layout) -> restore | None`` that
recognises its
module by type (and by its class still using the library's own forward, so subclasses that
change the maths are left alone) and returns the callable that undoes the patch.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..attention.base import AttentionModule
from .base import Restore, Sink, TokenLayout, token_layouts
from .mha import adapt_multihead_attention
from .timm_attention import adapt_timm_attention
from .windows import adapt_timm_swin_block, adapt_torchvision_swin

Adapter = Callable[[nn.Module, str, Callable[[str], Sink], TokenLayout | None], Restore | None]

#: Tried in order on every module; the first that recognises a module patches it.
ADAPTERS: tuple[Adapter, ...] = (
    adapt_timm_attention,
    adapt_timm_swin_block,
    adapt_torchvision_swin,
    adapt_multihead_attention,
)


def install(model: nn.Module, sink_for: Callable[[str], Sink]) -> list[Restore]:
    """Patch every recognised third-party attention module of ``model``.

    Args:
        model: any model.
        sink_for: qualified module name -> the sink that receives that module's maps.

    Returns:
        the restore callables, to be called (in any order) when recording ends.
    """
    layouts = token_layouts(model)
    # A visattn module records its own map; layers it is built from are not recorded again.
    own = [n + "." for n, m in model.named_modules() if isinstance(m, AttentionModule)]
    restores: list[Restore] = []
    try:
        for name, module in model.named_modules():
            if any(name.startswith(prefix) for prefix in own):
                continue
            for adapter in ADAPTERS:
                restore = adapter(module, name or type(module).__name__, sink_for, layouts.get(name))
                if restore is not None:
                    restores.append(restore)
                    break
    except BaseException:
        for restore in restores:
            restore()
        raise
    return restores


__all__ = ["ADAPTERS", "Restore", "Sink", "TokenLayout", "install"]
