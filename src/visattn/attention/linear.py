"""Linear attention with the feature map ``elu(x) + 1``.

Katharopoulos, Vyas, Pappas and Fleuret, "Transformers are RNNs: Fast Autoregressive
Transformers with Linear Attention", ICML 2020, arXiv:2006.16236.

Softmax similarity is replaced by the kernel ``phi(q) . phi(k)`` with ``phi(x) = elu(x) + 1``;
by associativity each head computes ``sum_j phi(k_j) v_j^T`` (d x d) and ``sum_j phi(k_j)``
once, so the cost is ``O(N d²)`` and no N x N matrix exists (paper eq. 6):
``out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / (phi(q_i)^T sum_j phi(k_j) + eps)``.

Conventions: the layer is the paper's drop-in replacement of multi-head softmax attention, so
it keeps the usual q/k/v and output linear projections over each position's C features; as
a feature-map module it adds its input by default (``residual=True``). Default: 4 heads.

Deviations: ``eps`` (default 1e-6, as in the authors' ``fast-transformers`` library) is added
to the denominator. ``phi`` is positive, so the denominator is positive, and eps only guards
against an underflow to zero; the implied weights of a row then sum to ``den / (den + eps)``.
The kernel is evaluated in at least float32 so half-precision inputs do not overflow the sums.

Reference checked against: a float64 explicit N x N evaluation of the paper's equation written
in the tests (no installable reference implements the 2-D module).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_float
from ..registry import ATTENTION
from .base import AttentionModule
from .parts import check_heads


def elu_feature_map(x: Tensor) -> Tensor:
    """The paper's positive feature map ``phi(x) = elu(x) + 1``, i.e. ``x + 1`` for x > 0 and
    ``exp(x)`` otherwise.

    Written with exp and relu because ``F.elu`` is about ten times slower on the CPU (it
    dominated the linear mechanism's time); without autograd the result is built in place.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return torch.where(x > 0, x + 1.0, x.clamp(max=0).exp())  # clamp: no inf in the unused branch
    return x.clamp(max=0).exp_().add_(F.relu(x))


def linear_attention(
    q: Tensor, k: Tensor, v: Tensor, *, eps: float, need_weights: bool
) -> tuple[Tensor, Tensor | None]:
    """Kernelised attention of already feature-mapped ``q, k`` ``(..., N, d)`` and ``v``
    ``(..., N, e)``: ``(q (k^T v)) / (q . sum_j k_j + eps)``.

    With ``need_weights`` the N x N matrix ``A_ij = q_i . k_j / (q_i . sum_j k_j + eps)`` is
    built and the output is ``A v`` (the same function, computed the quadratic way).
    """
    if need_weights:
        scores = q @ k.transpose(-2, -1)  # (..., N, N)
        weights = scores / (scores.sum(-1, keepdim=True) + eps)
        return weights @ v, weights  # (..., N, e), (..., N, N)
    kv = k.transpose(-2, -1) @ v  # (..., d, e): sum_j k_j v_j^T
    den = q @ k.sum(-2).unsqueeze(-1)  # (..., N, 1)
    return (q @ kv) / (den + eps), None  # (..., N, e)


@ATTENTION.register("linear")
class LinearAttention(AttentionModule):
    """Multi-head linear attention across the H*W positions of a feature map.

    ``y = x + proj(linear_attention(phi(q), phi(k), v))`` with q, k, v linear projections of
    each position's features and ``phi = elu + 1``.

    Args:
        channels: input and output width C.
        heads: number of heads; must divide C.
        qkv_bias: bias in the q/k/v projection.
        eps: added to the normaliser of every query (>= 0).
        proj_drop: dropout after the output projection while training.
        residual: add the input to the output.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``; recorded map kind ``"softmax"``
    ``(B, heads, H*W, H*W)`` with grid ``(H, W)``: the implied attention matrix
    ``A_ij = phi(q_i) . phi(k_j) / (sum_j phi(q_i) . phi(k_j) + eps)`` (rows sum to 1 up to
    eps), built only while recording.

    Example:
        >>> LinearAttention(64, heads=4)(torch.randn(2, 64, 33, 17)).shape
        torch.Size([2, 64, 33, 17])
    """

    family = "linear"
    paper = "Katharopoulos et al. 2020, Transformers are RNNs: Fast Autoregressive Transformers"
    complexity = "O(N)"

    def __init__(
        self,
        channels: int,
        *,
        heads: int = 4,
        qkv_bias: bool = True,
        eps: float = 1e-6,
        proj_drop: float = 0.0,
        residual: bool = True,
    ) -> None:
        super().__init__(channels)
        self.heads = check_heads(channels, heads)
        self.head_dim = channels // heads
        self.eps = check_float("eps", eps, low=0.0, high=1.0)
        self.residual = residual
        self.qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)
        self.proj_drop = nn.Dropout(check_float("proj_drop", proj_drop, low=0.0, high=1.0))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        B, C, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        qkv = self.qkv(tokens).view(B, H * W, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, h, N, d) each
        # Sums over all N positions: keep at least float32 whatever the input precision.
        wide = torch.promote_types(x.dtype, torch.float32)
        q, k, v = elu_feature_map(q.to(wide)), elu_feature_map(k.to(wide)), v.to(wide)
        out, weights = linear_attention(q, k, v, eps=self.eps, need_weights=self.recording)
        if weights is not None:
            self.keep_map(weights, kind="softmax", grid=(H, W))  # (B, heads, N, N)
        out = out.to(x.dtype).transpose(1, 2).reshape(B, H * W, C)  # (B, N, C)
        out = self.proj_drop(self.proj(out)).transpose(1, 2).reshape(B, C, H, W)
        return x + out if self.residual else out

    def extra_repr(self) -> str:
        return f"channels={self.channels}, heads={self.heads}, eps={self.eps}"
