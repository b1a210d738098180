"""Putting a model's weights in a memory format without tripping over the ones it does not fit.

``Module.to(memory_format=torch.channels_last)`` converts every 4-D *and* 5-D tensor and fails
on the 5-D ones (``channels_last`` needs rank 4), so a network with a ``Conv3d`` (the lambda
layer's position lambdas) cannot be sent to channels-last that way. ``to_memory_format`` changes
only the tensors of the rank the format is defined for and leaves the others as they are.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

_RANK = {torch.channels_last: 4, torch.channels_last_3d: 5}


def to_memory_format(
    module: nn.Module, memory_format: torch.memory_format, device: torch.device | str | None = None
) -> nn.Module:
    """``module`` (changed in place and returned) on ``device`` (unchanged when ``None``), with
    every parameter and buffer of the format's rank in ``memory_format`` (4-D for
    ``channels_last``, 5-D for ``channels_last_3d``; for ``contiguous_format`` every tensor).

    Example:
        >>> m = to_memory_format(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv3d(1, 2, 1)), torch.channels_last)
        >>> m[0].weight.is_contiguous(memory_format=torch.channels_last), m[1].weight.is_contiguous()
        (True, True)
    """
    rank = _RANK.get(memory_format)

    def convert(t: Tensor) -> Tensor:
        t = t if device is None else t.to(device)
        if rank is None or t.dim() == rank:
            return t.contiguous(memory_format=memory_format)
        return t

    return module._apply(convert)
