"""Lambda layer: content and position lambdas instead of attention maps.

Bello, "LambdaNetworks: Modeling Long-Range Interactions Without Attention", ICLR 2021,
arXiv:2102.08602.

Every position n gets ``heads`` queries of depth k; the layer summarises the context into
linear functions ("lambdas", k x v matrices) and applies them to the queries:
``y_n = (lambda_c + lambda_n^p)^T q_n`` per head, with the content lambda
``lambda_c = softmax_N(K)^T V`` shared by all positions and the position lambda
``lambda_n^p = sum_m e_{nm} v_m^T`` over an ``r x r`` neighbourhood of n (the paper's lambda
convolution: a 3-D convolution of the values with k output channels and an ``(1, r, r)``
kernel, zero outside the map), so it runs at any H, W at cost ``O(N r² k v)``. Queries and
values are batch-normalised, keys softmax-normalised over the positions, as in the paper.

Conventions: multi-query lambdas with intra-depth |u| = 1 (the paper's default); the value
depth is v = C / heads, so the heads' outputs concatenate to C. As a feature-map module it
adds its input by default (``residual=True``); the paper uses the layer in place of the 3x3
convolution of a bottleneck, without a residual of its own (``residual=False``). Defaults are
the paper's: 4 heads, |k| = 16, r = 23 (timm defaults to r = 9). The query norm is a
``BatchNorm1d`` over the ``(B*N, h*k)`` query tokens: the same statistics and state as a
``BatchNorm2d`` over ``(B, h*k, H, W)``, but its gradient stays contiguous, which PyTorch's
CPU BatchNorm2d backward needs at batch 1 (see ``forward``). timm stores the lambda
convolution's kernel as ``(k, 1, r, r, 1)`` over ``(H, W, v)``; here it is ``(k, 1, 1, r, r)``
over ``(v, H, W)``: the same numbers, permuted.

Deviations: none by default. timm's ``LambdaLayer`` gives its lambda convolution a bias,
which the paper's does not have; ``position_bias=True`` adds it and then reproduces timm.

Reference checked against: timm ``timm.layers.lambda_layer.LambdaLayer`` with ``r`` set
(size-free; its ``feat_size`` only serves the non-local relative variant): same weights,
within 1e-5, with ``position_bias=True``; by default the output differs from timm's by
exactly ``q . bias`` (tested). The lambda convolution is also checked against the paper's
einsum form ``'nmk,bmv->bnkv'`` with explicit relative embeddings in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int, check_odd
from ..registry import ATTENTION
from .base import AttentionModule
from .parts import check_heads


class _LambdaConv(torch.autograd.Function):
    """``F.conv2d(x, weight, padding=pad)`` for one input channel, with a faster CPU backward.

    PyTorch's CPU convolution backward takes ~15x the forward's time for this shape (one input
    channel, many images, a large r x r kernel), most of it in the weight gradient. That
    gradient is itself a convolution -- the padded input, images as channels, correlated with
    the output gradient as the kernel -- which oneDNN runs about 3x faster; the input gradient
    stays PyTorch's own.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, pad: tuple[int, int]) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.pad = pad
        return F.conv2d(x, weight, padding=pad)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        (ph, pw), grad = ctx.pad, grad.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], [ph, pw], [1, 1], False, [0, 0], 1, [True, False, False]
            )[0]
        if ctx.needs_input_grad[1]:  # (1, n, H + 2ph, W + 2pw) correlated with (k, n, H, W)
            padded = F.pad(x, (pw, pw, ph, ph)).transpose(0, 1)
            grad_w = F.conv2d(padded, grad.transpose(0, 1)).transpose(0, 1)
        return grad_x, grad_w, None


def lambda_conv(values: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The lambda convolution: every value channel convolved with the k relative-position
    embeddings ``weight`` (k, r, r), zero outside the map.

    Shapes: values ``(B, v, H, W)`` -> ``(B, v, k, H, W)``.
    """
    B, v, H, W = values.shape
    k, r = weight.shape[0], weight.shape[-1]
    # Kernel taps more than H - 1 rows (W - 1 columns) from the centre only ever meet the
    # zero padding: a map smaller than r x r uses the central (2H - 1) x (2W - 1) part, which
    # is exact and several times faster on small maps.
    rh, rw = min(r, 2 * H - 1), min(r, 2 * W - 1)
    top, left = (r - rh) // 2, (r - rw) // 2
    x = values.reshape(B * v, 1, H, W)
    w = weight.reshape(k, 1, r, r)[:, :, top : top + rh, left : left + rw]
    pad = (rh // 2, rw // 2)
    fast = x.device.type == "cpu" and torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)
    if fast and not torch.compiler.is_compiling():
        out = _LambdaConv.apply(x, w, pad)
    else:
        out = F.conv2d(x, w, padding=pad)
    if bias is not None:
        out = out + bias.view(1, k, 1, 1)
    return out.view(B, v, k, H, W)


@ATTENTION.register("lambda")
class LambdaLayer(AttentionModule):
    """Lambda layer with content lambdas and local (``r x r``) position lambdas.

    Args:
        channels: input and output width C.
        heads: number of query heads; must divide C (each head outputs C / heads channels).
        key_dim: query/key depth k (the paper's |k| = 16).
        r: side of the local context of the position lambdas (odd; the paper uses 23).
        qkv_bias: bias in the q/k/v projection.
        position_bias: bias in the lambda convolution (timm has one, the paper does not).
        residual: add the input to the output.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``; recorded map kind ``"softmax"``, part
    ``"keys"``: ``(B, 1, k, H*W)``, the keys softmax-normalised over the positions (the
    weights with which each of the k key channels averages the values into the content
    lambda), grid ``(H, W)``.

    Example:
        >>> LambdaLayer(64, r=7)(torch.randn(2, 64, 33, 17)).shape
        torch.Size([2, 64, 33, 17])
    """

    family = "linear"
    paper = "Bello 2021, LambdaNetworks: Modeling Long-Range Interactions Without Attention"
    complexity = "O(N)"

    def __init__(
        self,
        channels: int,
        *,
        heads: int = 4,
        key_dim: int = 16,
        r: int = 23,
        qkv_bias: bool = False,
        position_bias: bool = False,
        residual: bool = True,
    ) -> None:
        super().__init__(channels)
        self.heads = check_heads(channels, heads)
        self.key_dim = check_int("key_dim", key_dim)
        self.r = check_odd("r", r)
        self.value_dim = channels // heads
        self.residual = residual
        self.qkv = nn.Conv2d(channels, (heads + 1) * key_dim + self.value_dim, 1, bias=qkv_bias)
        self.norm_q = nn.BatchNorm1d(heads * key_dim)
        self.norm_v = nn.BatchNorm2d(self.value_dim)
        # One input channel, k output channels, an r x r window over (H, W), 1 along v: every
        # value channel is convolved with the same k relative-position embeddings. Stored as a
        # Conv3d (the paper's form); computed by ``lambda_conv`` as a 2-D convolution.
        self.conv_lambda = nn.Conv3d(1, key_dim, (1, r, r), padding=(0, r // 2, r // 2), bias=position_bias)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        B, C, H, W = x.shape
        hk, k_, v_ = self.heads * self.key_dim, self.key_dim, self.value_dim
        q, k, v = self.qkv(x).split([hk, k_, v_], dim=1)  # (B, h*k | k | v, H, W)
        # Queries as (B*N, h*k) tokens: BatchNorm1d there has BatchNorm2d's statistics, and the
        # per-position product below then hands back a contiguous gradient (PyTorch's CPU
        # BatchNorm2d backward is wrong for the batch-1 channels-last-strided gradient that the
        # (B, h*k, H, W) layout would receive).
        q = self.norm_q(q.flatten(2).transpose(1, 2).reshape(B * H * W, hk))  # (B*N, h*k)
        q = q.view(B, H * W, self.heads, k_)  # (B, N, h, k)
        values = self.norm_v(v)  # (B, v, H, W)
        keys = k.reshape(B, k_, H * W).softmax(dim=-1)  # (B, k, N)
        self.keep_map(keys.unsqueeze(1), kind="softmax", grid=(H, W), part="keys")  # (B, 1, k, N)
        content = values.reshape(B, v_, H * W) @ keys.transpose(1, 2)  # (B, v, k): lambda_c^T
        conv = self.conv_lambda
        position = lambda_conv(values, conv.weight, conv.bias).view(B, v_, k_, H * W)  # (B, v, k, N)
        lambdas = position + content.unsqueeze(-1)  # (B, v, k, N): lambda_c + lambda_n^p
        # One (h x k) @ (k x v) product per position applies its lambda to its h queries.
        out = q @ lambdas.permute(0, 3, 2, 1)  # (B, N, h, v)
        out = out.permute(0, 2, 3, 1).reshape(B, C, H, W)  # heads concatenated: (B, h*v, H, W)
        return x + out if self.residual else out

    def extra_repr(self) -> str:
        return f"channels={self.channels}, heads={self.heads}, key_dim={self.key_dim}, r={self.r}"
