"""Non-local block, embedded-Gaussian form.

Wang et al., CVPR 2018, "Non-local Neural Networks", arXiv:1711.07971:
``z_i = BN(W y_i) + x_i`` with ``y_i = sum_j softmax_j(theta(x_i) . phi(x_j)) g(x_j)``; theta,
phi and g are 1x1 convolutions to C/2 channels, W a 1x1 convolution back to C followed by a
BatchNorm whose scale starts at zero, so the block starts as the identity.

Deviations from the paper: none by default. Options: ``scale`` divides the logits by
``sqrt(C/2)`` (the authors' released code) or ``sqrt(C)`` (timm); ``subsample=True`` max-pools
phi and g by 2 (the paper's efficiency variant; odd sizes round up).

Reference checked against: timm ``NonLocalAttn`` with ``scale="input"`` and the reduction that
gives its width (timm reduces to C/8 rounded to a multiple of 8, scales by 1/sqrt(C), and sets
BN's weight and bias to zero; the paper scales nothing and zero-initialises BN's weight).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_choice
from ..functional import attention
from ..registry import ATTENTION
from .base import AttentionModule
from .parts import hidden_width


@ATTENTION.register("nonlocal")
class NonLocal2d(AttentionModule):
    """Non-local block (embedded Gaussian): softmax attention over all positions plus the input.

    Args:
        channels: input and output width C.
        reduction, min_hidden, round_to, hidden: the width ``inner`` of theta, phi and g
            (``parts.hidden_width``): ``C // reduction`` rounded to a multiple of
            ``round_to``, at least ``min_hidden``; or ``hidden`` itself (paper: C / 2).
        scale: ``"none"`` (paper), ``"inner"`` (``1/sqrt(inner)``, authors' code) or
            ``"input"`` (``1/sqrt(channels)``, timm).
        subsample: max-pool phi and g by 2 (ceil for odd sizes): N/4 keys.
        norm_layer: norm after W, called with ``channels``; its weight starts at zero. With
            ``None`` the W projection itself (weight and bias) starts at zero.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``; recorded map ``(B, 1, H*W, Nk)`` with
    ``Nk = H*W`` (or ``ceil(H/2) * ceil(W/2)`` when subsampling).

    Example:
        >>> NonLocal2d(64)(torch.randn(2, 64, 14, 9)).shape
        torch.Size([2, 64, 14, 9])
    """

    family = "global"
    paper = "Wang et al. 2018, Non-local Neural Networks"
    complexity = "O(N²)"

    def __init__(
        self,
        channels: int,
        *,
        reduction: int = 2,
        min_hidden: int = 1,
        round_to: int = 1,
        hidden: int | None = None,
        scale: str = "none",
        subsample: bool = False,
        norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm2d,
    ) -> None:
        super().__init__(channels)
        self.scale = check_choice("scale", scale, ("none", "inner", "input"))
        self.subsample = subsample
        self.inner = hidden_width(channels, reduction, min_hidden, round_to, hidden)
        self.theta_phi_g = nn.Linear(channels, 3 * self.inner)  # theta | phi | g
        self.out = nn.Conv2d(self.inner, channels, 1)  # the paper's W
        self.norm = norm_layer(channels) if norm_layer is not None else nn.Identity()
        # The block starts as the identity: zero the norm's scale, or W itself without a norm.
        if norm_layer is None:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
        elif getattr(self.norm, "weight", None) is not None:
            nn.init.zeros_(self.norm.weight)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        B, C, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        proj = self.theta_phi_g(tokens)  # (B, N, 3 * inner)
        theta, keys = proj.split((self.inner, 2 * self.inner), -1)  # (B, N, inner), (B, N, 2 * inner)
        h, w = H, W
        if self.subsample:
            grid = keys.transpose(1, 2).reshape(B, 2 * self.inner, H, W)  # (B, 2 * inner, H, W)
            grid = F.max_pool2d(grid, 2, 2, ceil_mode=True)  # (B, 2 * inner, h, w)
            h, w = grid.shape[-2:]
            keys = grid.flatten(2).transpose(1, 2)  # (B, h*w, 2 * inner)
        phi, g = keys.split(self.inner, -1)  # (B, Nk, inner) each
        scale = {"none": 1.0, "inner": self.inner**-0.5, "input": C**-0.5}[self.scale]
        # One head: (B, 1, N, inner) operands; the kernel copies to unit stride if needed.
        y, weights = attention(
            theta.unsqueeze(1), phi.unsqueeze(1), g.unsqueeze(1), scale=scale, need_weights=self.recording
        )  # (B, 1, N, inner)
        if weights is not None:
            self.keep_map(weights, kind="softmax", grid=(h, w))  # (B, 1, N, Nk)
        y = y.squeeze(1).transpose(1, 2).reshape(B, self.inner, H, W)  # (B, inner, H, W)
        return x + self.norm(self.out(y))

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, inner={self.inner}, scale={self.scale!r}, subsample={self.subsample}"
        )
