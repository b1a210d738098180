"""Putting a model's weights in a memory format without tripping over the ones it does not fit.

``Module.to(memory_format=torch.channels_last)`` converts every 4-D *and* 5-D tensor and fails
on the 5-D ones (``channels_last`` needs rank 4), so a network with a ``Conv3d`` (the lambda
layer's position lambdas) cannot be sent to channels-last that way. ``to_memory_format`` changes
only the tensors of the rank the format is defined for and leaves the others as they are.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

_RANKS = {torch.channels_last: (4,), torch.channels_last_3d: (5,), torch.contiguous_format: (4, 5)}


def to_memory_format(
    module: nn.Module, memory_format: torch.memory_format, device: torch.device | str | None = None
) -> nn.Module:
    """``module`` (changed in place and returned) on ``device`` (unchanged when ``None``), with
    every parameter and buffer of the format's rank in ``memory_format`` (4-D for
    ``channels_last``, 5-D for ``channels_last_3d``, both for ``contiguous_format``).

    Example:
        >>> m = to_memory_format(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv3d(1, 2, 1)), torch.channels_last)
        >>> m[0].weight.is_contiguous(memory_format=torch.channels_last), m[1].weight.is_contiguous()
        (True, True)
    """
    ranks = _RANKS.get(memory_format, (4, 5))

    def convert(t: Tensor) -> Tensor:
        # ``Tensor.to``, as ``Module.to`` does: it gives the exact strides of the format, where
        # ``contiguous`` would keep a size-1 dimension's old stride (a one-channel conv weight)
        if t.dim() in ranks:
            return (
                t.to(device, memory_format=memory_format)
                if device is not None
                else t.to(memory_format=memory_format)
            )
        return t if device is None else t.to(device)

    return module._apply(convert)
