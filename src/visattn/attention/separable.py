"""Separable self-attention of MobileViT v2.

Mehta and Rastegari, "Separable Self-attention for Mobile Vision Transformers", TMLR 2023
(arXiv 2022), arXiv:2206.02680.

A 1x1 convolution maps every position to one score, C key and C value channels. The scores
are normalised by a softmax over the positions; their weighted sum of the keys is one global
context vector (C,), and each position's output is ``proj(relu(value) * context)``. The cost
is linear in N and there is no N x N matrix at all.

Conventions: MobileViT v2 applies the layer to unfolded patches, ``(B, C, P, N)`` with a
separate softmax for each of the P pixel offsets inside a patch; here every position of the
map is a token (P = 1, N = H*W), so the context is global over the whole map. As a
feature-map module it adds its input by default (``residual=True``); timm's
``LinearSelfAttention`` returns the bare branch and its block adds the (pre-normalised) input.

Deviations: none.

Reference checked against: timm ``timm.models.mobilevit.LinearSelfAttention`` on the input
reshaped to ``(B, C, 1, H*W)`` (same weights, ``residual=False``, within 1e-5).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .._checks import check_float
from ..registry import ATTENTION
from .base import AttentionModule


@ATTENTION.register("separable")
class SeparableSelfAttention(AttentionModule):
    """MobileViT v2 separable self-attention over the positions of a feature map.

    ``scores = softmax_N(s(x))``, ``context = sum_N scores * k(x)``,
    ``y = x + proj(act(v(x)) * context)``.

    Args:
        channels: input and output width C.
        bias: bias in the two 1x1 convolutions.
        attn_drop: dropout on the context scores while training.
        proj_drop: dropout after the output projection while training.
        act_layer: activation of the values (the paper's ReLU), called with no arguments.
        residual: add the input to the output.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``; recorded map kind ``"softmax"``
    ``(B, 1, 1, H*W)`` with grid ``(H, W)``: the context scores, the weight of every position
    in the context vector.

    Example:
        >>> SeparableSelfAttention(64)(torch.randn(2, 64, 33, 17)).shape
        torch.Size([2, 64, 33, 17])
    """

    family = "linear"
    paper = "Mehta and Rastegari 2022, Separable Self-attention for Mobile Vision Transformers"
    complexity = "O(N)"

    def __init__(
        self,
        channels: int,
        *,
        bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        act_layer: Callable[[], nn.Module] = nn.ReLU,
        residual: bool = True,
    ) -> None:
        super().__init__(channels)
        self.residual = residual
        self.qkv = nn.Conv2d(channels, 1 + 2 * channels, 1, bias=bias)
        self.attn_drop = nn.Dropout(check_float("attn_drop", attn_drop, low=0.0, high=1.0))
        self.act = act_layer()
        self.proj = nn.Conv2d(channels, channels, 1, bias=bias)
        self.proj_drop = nn.Dropout(check_float("proj_drop", proj_drop, low=0.0, high=1.0))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        B, C, H, W = x.shape
        score, key, value = self.qkv(x).split([1, C, C], dim=1)  # (B, 1 | C | C, H, W)
        scores = score.reshape(B, 1, H * W).softmax(dim=-1)  # (B, 1, N)
        self.keep_map(scores.unsqueeze(1), kind="softmax", grid=(H, W))  # (B, 1, 1, N)
        context = (key.reshape(B, C, H * W) * self.attn_drop(scores)).sum(-1)  # (B, C)
        out = self.act(value) * context[:, :, None, None]  # (B, C, H, W)
        out = self.proj_drop(self.proj(out))
        return x + out if self.residual else out
