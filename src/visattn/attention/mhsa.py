"""Multi-head self-attention: one token class, and its feature-map form.

Vaswani et al., NeurIPS 2017, "Attention Is All You Need", arXiv:1706.03762; applied to the
H*W positions of a CNN feature map as in Wang et al. 2018 (non-local) and Srinivas et al.
2021 (BoTNet). Reference checked against: ``torch.nn.MultiheadAttention``, and torchvision's and
timm's ViT attention (through ``VisionTransformer``, same weights).

``MultiHeadAttention`` is the one token attention of visattn, ``(B, N, C) -> (B, N, C)``: the
transformers' attention (ViT) and the core of ``MultiHeadSelfAttention2d`` (registered as
``"mhsa"``), which flattens a ``(B, C, H, W)`` map to its H*W position tokens and calls it.
``SelfAttention`` is its one-head case without output projection.

Deviations: position information of the feature-map form is a fixed 2-D sine-cosine encoding
added to the queries and keys only (Carion et al. 2020, DETR), not to the values, so that the
module works at any H x W without a table sized at construction; the encoding's projection is
computed once per grid instead of once per sample. ``pos="conv"`` uses a depthwise 3x3
convolution instead (conditional position encoding, Chu et al. 2023, arXiv:2102.10882).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_choice, check_float, check_int
from ..functional import attention, sincos_2d
from ..registry import ATTENTION
from .base import AttentionModule

__all__ = ["MultiHeadAttention", "MultiHeadSelfAttention2d", "SelfAttention"]


class MultiHeadAttention(AttentionModule):
    """Multi-head self-attention over a token sequence: ``proj(attention(q, k, v))`` with
    q, k, v one fused linear projection of each token, split into heads.

    Args:
        channels: token width C.
        heads: number of heads.
        head_dim: width of each head; ``channels // heads`` when ``None``.
        qkv_bias: bias in the Q/K/V projection.
        attn_drop: dropout on the attention weights while training.
        proj_drop: dropout after the output projection while training.
        out_proj: end with the linear output projection ``proj`` (needs
            ``heads * head_dim == channels`` when ``False``).

    Shapes: ``(B, N, C) -> (B, N, C)``. ``forward(x, grid=(h, w))`` names the positions of
    the tokens: either ``N == h*w`` (every token a position: the recorded map
    ``(B, heads, N, N)`` carries that grid) or ``N == 1 + h*w`` (a leading class token: the
    full map with the grid and one prefix token, which rollout and grad-attention read, and
    part ``"cls"``, the class token's weights over the patches, ``(B, heads, 1, h*w)``,
    renormalised to sum to 1, which the ``attention`` heat map draws).

    Example:
        >>> MultiHeadAttention(64, heads=4)(torch.randn(2, 1 + 7 * 7, 64), grid=(7, 7)).shape
        torch.Size([2, 50, 64])
    """

    family = "token"
    paper = "Vaswani et al. 2017, Attention Is All You Need"
    complexity = "O(N²)"
    layout = "token"

    def __init__(
        self,
        channels: int,
        *,
        heads: int = 8,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        out_proj: bool = True,
    ) -> None:
        super().__init__(channels)
        self.heads = check_int("heads", heads)
        if head_dim is None:
            if channels % heads:
                raise ValueError(
                    f"heads must divide channels ({channels}) when head_dim is not given, got {heads}"
                )
            head_dim = channels // heads
        self.head_dim = check_int("head_dim", head_dim)
        inner = heads * head_dim
        if not out_proj and inner != channels:
            raise ValueError(f"out_proj=False needs heads * head_dim == channels ({channels}), got {inner}")
        self.attn_drop = check_float("attn_drop", attn_drop, low=0.0, high=1.0)
        self.qkv = nn.Linear(channels, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, channels) if out_proj else None
        self.proj_drop = nn.Dropout(check_float("proj_drop", proj_drop, low=0.0, high=1.0))

    def forward(
        self, x: Tensor, *, grid: tuple[int, int] | None = None, mask: Tensor | None = None
    ) -> Tensor:
        """``mask``: ``(N, N)`` or ``(B, N, N)``, the same for every head, as in
        ``visattn.attention`` (True or 0 where a query may attend)."""
        self.check_input(x)
        N = x.shape[1]
        if grid is not None and N not in (grid[0] * grid[1], grid[0] * grid[1] + 1):
            n = grid[0] * grid[1]
            raise ValueError(f"grid {tuple(grid)} needs {n} or 1 + {n} tokens, got {N}")
        return self.attend(self.qkv(x), grid=grid, mask=mask)

    def attend(
        self, qkv: Tensor, *, grid: tuple[int, int] | None = None, mask: Tensor | None = None
    ) -> Tensor:
        """``(B, N, 3 * heads * head_dim)`` projected tokens -> ``(B, N, C)``: the attention,
        the recorded maps and the output projection (for subclasses that build q, k, v
        themselves)."""
        B, N, _ = qkv.shape
        inner = self.heads * self.head_dim
        # A permute keeps the head dimension's stride at 1, which the fused kernel needs.
        q, k, v = qkv.view(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, h, N, d)
        if mask is not None and mask.ndim in (2, 3):
            mask = mask.unsqueeze(-3)  # (..., 1, N, N): the same for every head
        p = self.attn_drop if self.training else 0.0
        out, weights = attention(q, k, v, mask=mask, dropout_p=p, need_weights=self.recording)  # (B, h, N, d)
        if weights is not None:
            self._keep(weights, grid)
        out = out.transpose(1, 2).reshape(B, N, inner)  # (B, N, heads * d), heads concatenated
        return self.proj_drop(self.proj(out)) if self.proj is not None else out

    def _keep(self, weights: Tensor, grid: tuple[int, int] | None) -> None:
        N = weights.shape[-1]
        if grid is None or grid[0] * grid[1] == N:  # no positions named, or every token a position
            self.keep_map(weights, kind="softmax", grid=None if grid is None else tuple(grid))  # (B, h, N, N)
            return
        # a leading class token: the full map (rollout and grad-attention read it) and the class row
        self.keep_map(weights, kind="softmax", grid=tuple(grid), prefix=N - grid[0] * grid[1])
        cls = weights[:, :, :1, 1:]  # (B, heads, 1, h*w)
        self.keep_map(cls / cls.sum(-1, keepdim=True), kind="softmax", grid=tuple(grid), part="cls")

    def extra_repr(self) -> str:
        return f"channels={self.channels}, heads={self.heads}, head_dim={self.head_dim}"


class SelfAttention(MultiHeadAttention):
    """Single-head self-attention over tokens: ``MultiHeadAttention`` with one head and no
    output projection.

    The layer of the classic tutorial, with its bugs fixed: it attends across the tokens
    (the second axis) and takes the fused kernel unless its map is being recorded.

    Args:
        channels: token width C.
        qkv_bias: bias in the Q/K/V projection.
        dropout: dropout on the attention weights while training.

    Shapes: ``(B, N, C) -> (B, N, C)``; recorded map ``(B, 1, N, N)``.

    Example:
        >>> SelfAttention(64)(torch.randn(2, 49, 64)).shape
        torch.Size([2, 49, 64])
    """

    def __init__(self, channels: int, *, qkv_bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__(channels, heads=1, qkv_bias=qkv_bias, attn_drop=dropout, out_proj=False)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


@ATTENTION.register("mhsa")
class MultiHeadSelfAttention2d(MultiHeadAttention):
    """Multi-head self-attention across the H*W positions of a feature map, with a residual.

    ``y = x + proj(attention(q, k, v))`` where q, k, v are linear projections of each
    position's C features; q and k also carry the 2-D position. The positions are flattened to
    ``(B, H*W, C)`` tokens and attended by ``MultiHeadAttention`` (its ``token_form``: models
    whose blocks mix tokens, such as the ViT, build that class for ``attention="mhsa"``).

    Args:
        channels: input and output width C.
        heads: number of heads.
        head_dim: width of each head; ``channels // heads`` when ``None``.
        qkv_bias: bias in the Q/K/V projection.
        pos: ``"sine"`` (fixed 2-D encoding on q and k), ``"conv"`` (depthwise 3x3
            convolution added to the input) or ``"none"``.
        attn_drop: dropout on the attention weights while training.
        proj_drop: dropout after the output projection while training.
        residual: add the input to the output.
        norm_layer: optional norm applied to the tokens before the projection, called
            with the width (e.g. ``nn.LayerNorm``).

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``; recorded map ``(B, heads, H*W, H*W)``.

    Example:
        >>> MultiHeadSelfAttention2d(64, heads=4)(torch.randn(2, 64, 15, 15)).shape
        torch.Size([2, 64, 15, 15])
    """

    family = "global"
    paper = "Vaswani et al. 2017, Attention Is All You Need (over 2-D positions)"
    complexity = "O(N²)"
    layout = "feature-map"
    #: The same mechanism on a token sequence (``visattn.models.factory`` builds it for models
    #: whose attention mixes tokens).
    token_form: ClassVar[type[MultiHeadAttention]] = MultiHeadAttention

    def __init__(
        self,
        channels: int,
        *,
        heads: int = 4,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        pos: str = "sine",
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        residual: bool = True,
        norm_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__(
            channels, heads=heads, head_dim=head_dim, qkv_bias=qkv_bias, attn_drop=attn_drop,
            proj_drop=proj_drop,
        )  # fmt: skip
        self.pos = check_choice("pos", pos, ("sine", "conv", "none"))
        self.residual = residual
        self.norm = norm_layer(channels) if norm_layer is not None else nn.Identity()
        self.pos_conv = (
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels) if pos == "conv" else None
        )

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        self.check_input(x)
        B, C, H, W = x.shape
        inner = self.heads * self.head_dim
        if self.pos_conv is not None:
            x = x + self.pos_conv(x)
        tokens = self.norm(x.flatten(2).transpose(1, 2))  # (B, N, C)
        qkv = self.qkv(tokens)  # (B, N, 3 * inner)
        if self.pos == "sine":
            # Position enters q and k only: project the encoding once for the whole batch.
            enc = sincos_2d(H, W, C, device=x.device, dtype=tokens.dtype)  # (N, C)
            pos_qk = F.linear(enc, self.qkv.weight[: 2 * inner])  # (N, 2 * inner)
            qkv = qkv + F.pad(pos_qk, (0, inner))
        out = self.attend(qkv, grid=(H, W))  # (B, N, C)
        out = out.transpose(1, 2).reshape(B, C, H, W)
        return x + out if self.residual else out

    def extra_repr(self) -> str:
        return f"channels={self.channels}, heads={self.heads}, head_dim={self.head_dim}, pos={self.pos!r}"
