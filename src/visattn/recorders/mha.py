"""PyTorch's ``nn.MultiheadAttention`` (torchvision's ViT and many hand-written models).

The replacement computes what ``F.multi_head_attention_forward`` computes for the usual
configuration: packed or separate input projections with their biases, an attention mask
and a key padding mask (boolean ``True`` = may *not* attend, as in PyTorch, or additive),
``is_causal``, dropout on the weights, the output projection, batch-first or not, batched
or not. Modules with ``bias_k``/``bias_v`` or ``add_zero_attn`` are left unrecorded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional import attention
from .base import Restore, Sink, TokenLayout, patch_method, uses_own

log = logging.getLogger(__name__)


def _forbidden(mask: Tensor | None, like: Tensor) -> Tensor | None:
    """PyTorch's mask convention (bool ``True`` = forbidden, floats added) -> additive."""
    if mask is None or mask.dtype != torch.bool:
        return None if mask is None else mask.to(like.dtype)
    return like.new_zeros(mask.shape).masked_fill(mask, float("-inf"))


def adapt_multihead_attention(
    module: nn.Module, name: str, sink_for: Callable[[str], Sink], layout: TokenLayout | None
) -> Restore | None:
    """Record an ``nn.MultiheadAttention`` as a ``"softmax"`` map ``(B, heads, L, S)``."""
    if not uses_own(module, nn.MultiheadAttention):
        return None
    if module.bias_k is not None or module.add_zero_attn:
        log.warning("%s: MultiheadAttention with bias_k/add_zero_attn is not recorded", name)
        return None
    sink = sink_for(name)

    def forward(
        self: nn.MultiheadAttention,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        unbatched = query.ndim == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))  # (B, L, E)
        B, L, _ = query.shape
        S, heads = key.shape[1], self.num_heads
        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q, b_k, b_v = (None,) * 3 if self.in_proj_bias is None else self.in_proj_bias.chunk(3)
        q = F.linear(query, w_q, b_q).view(B, L, heads, -1).transpose(1, 2)  # (B, heads, L, d)
        k = F.linear(key, w_k, b_k).view(B, S, heads, -1).transpose(1, 2)  # (B, heads, S, d)
        v = F.linear(value, w_v, b_v).view(B, S, heads, -1).transpose(1, 2)  # (B, heads, S, dv)
        if is_causal and attn_mask is None:
            attn_mask = torch.ones(L, S, dtype=torch.bool, device=q.device).triu(1)
        mask = _forbidden(attn_mask, q)
        if mask is not None and mask.ndim == 3:
            mask = mask.view(B, heads, L, S)  # PyTorch's (B * heads, L, S)
        padding = _forbidden(key_padding_mask, q)
        if padding is not None:
            padding = padding.view(B, 1, 1, S)
            mask = padding if mask is None else mask + padding
        dropout = self.dropout if self.training else 0.0
        out, weights = attention(q, k, v, mask=mask, dropout_p=dropout, need_weights=True)
        grid = None if layout is None else layout.grid_for(S)
        sink(weights, kind="softmax", grid=grid, prefix=0 if layout is None else layout.prefix)
        out = self.out_proj(out.transpose(1, 2).reshape(B, L, -1))  # (B, L, E)
        if unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        returned = weights.mean(dim=1) if average_attn_weights else weights
        return out, returned.squeeze(0) if unbatched else returned

    return patch_method(module, "forward", forward)
