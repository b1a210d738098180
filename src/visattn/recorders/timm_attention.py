"""timm's ``timm.layers.Attention`` (ViT, DeiT, and every timm model built on it).

The replacement follows ``Attention.forward`` of timm 1.0 line by line (optional output
gate, fused qkv projection, q/k norms, mask or causal mask, attention dropout, scale norm,
projection) with the softmax taken explicitly so that its weights can be recorded.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..functional import attention
from .base import Restore, Sink, TokenLayout, patch_method, uses_own


def adapt_timm_attention(
    module: nn.Module, name: str, sink_for: Callable[[str], Sink], layout: TokenLayout | None
) -> Restore | None:
    """Record a ``timm.layers.Attention`` as a ``"softmax"`` map ``(B, heads, N, N)``."""
    timm_attention = sys.modules.get("timm.layers.attention")
    if timm_attention is None or not uses_own(module, timm_attention.Attention):
        return None
    sink = sink_for(name)

    def forward(
        self: nn.Module, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if getattr(self, "gate", None) is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, d) each
        q, k = self.q_norm(q), self.k_norm(k)
        mask = attn_mask
        if is_causal:  # timm: is_causal takes precedence over attn_mask
            mask = torch.ones(N, N, dtype=torch.bool, device=x.device).tril()
        dropout = self.attn_drop.p if self.training else 0.0
        out, weights = attention(q, k, v, mask=mask, dropout_p=dropout, scale=self.scale, need_weights=True)
        grid = None if layout is None else layout.grid_for(N)
        sink(weights, kind="softmax", grid=grid, prefix=0 if layout is None else layout.prefix)
        out = out.transpose(1, 2).reshape(B, N, -1)  # (B, N, heads * d)
        if getattr(self, "norm", None) is not None:  # scale norm (timm >= 1.0.10)
            out = self.norm(out)
        if gate is not None:
            out = out * gate
        return self.proj_drop(self.proj(out))

    return patch_method(module, "forward", forward)
