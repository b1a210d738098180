"""FLOP counting that also sees PyTorch's fused CPU attention kernel.

``torch.utils.flop_counter`` knows the CUDA flash and memory-efficient attention kernels but
not the CPU flash kernel, so on the CPU the attention matmuls of the fused path would count
as zero. The formulas registered here are torch's own ``sdpa`` counts, applied to that op.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

_aten = torch.ops.aten


def _cpu_flash_forward(
    query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_backward(
    grad_out_shape: Any,
    query_shape: Any,
    key_shape: Any,
    value_shape: Any,
    *args: Any,
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


CUSTOM_FLOPS = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_forward,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward,
}


def count_flops(module: nn.Module, *inputs: Tensor, backward: bool = False) -> int:
    """FLOPs of one call ``module(*inputs)`` (a multiply-add counts as 2), attention matmuls
    included whichever kernel runs; with ``backward`` the gradient pass is added.

    Example:
        >>> count_flops(nn.Linear(8, 4), torch.randn(2, 8))
        128
    """
    with FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS) as counter:
        if backward:
            out = module(*inputs)
            out.float().sum().backward()
        else:
            with torch.no_grad():
                module(*inputs)
    return int(counter.get_total_flops())
