"""Selective Kernel attention: M convolution branches with different receptive fields, mixed
per channel by a softmax across the branches.

Li, Wang, Hu and Yang, "Selective Kernel Networks", CVPR 2019, arXiv:1903.06586.

Used here as an attention module ``(B, C, H, W) -> (B, C, H, W)`` (the paper's SK
convolution with as many output as input channels). Split: branch m is a grouped 3x3
convolution with dilation ``(k_m - 1) // 2`` (the paper's efficient stand-in for a k x k
kernel; ``dilate=False`` uses plain k x k kernels) + BN + ReLU. Fuse: ``s = mean_hw(sum_m
U_m)``, ``z = ReLU(BN(A s))`` with ``d = max(C // r, L)``. Select: ``a_m = softmax_m(B_m
z)`` per channel, ``V = sum_m a_m * U_m``.

Deviations from the paper: none in the function computed. The paper's 32 groups (SKNet-50)
need C divisible by 32; here ``groups`` is an upper bound and each branch uses the largest
divisor of its input and output widths not above it (C = 16 gives depthwise branches).
The batch norm on the pooled vector needs batches of two or more while training, as in
the paper and in timm.

timm's ``SelectiveKernel`` differs by default: ``split_input=True`` feeds each branch a
1/M slice of the channels (not in the paper), groups = 1, and d is rounded to a multiple of
8 with no floor L (and up by 8 more where that loses over 10 %). ``split_input=True,
groups=1, min_hidden=8`` reproduces it wherever timm's d equals ``max(C // 16, 8)`` (C <= 128
or a multiple of 128), and with ``hidden`` set to timm's d at every C.

Reference checked against: timm ``timm.layers.SelectiveKernel`` with and without
``split_input`` (same weights, outputs within 1e-5).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn

from .._checks import check_int
from ..registry import ATTENTION
from .base import AttentionModule
from .parts import hidden_width, largest_divisor


def _check_kernels(kernel_sizes: object) -> tuple[int, ...]:
    ok = isinstance(kernel_sizes, (tuple, list)) and len(kernel_sizes) >= 2
    ok = ok and all(isinstance(k, int) and not isinstance(k, bool) and k >= 3 and k % 2 for k in kernel_sizes)
    if not ok:
        raise ValueError(f"kernel_sizes must be two or more odd integers >= 3, got {kernel_sizes!r}")
    return tuple(kernel_sizes)  # type: ignore[arg-type]


@ATTENTION.register("sk")
class SelectiveKernel(AttentionModule):
    """Selective Kernel unit with as many output channels as input channels.

    Args:
        channels: input and output width C.
        kernel_sizes: receptive field of each branch (M = its length), odd, >= 3.
        dilate: realise a k x k branch as a 3x3 convolution with dilation ``(k - 1) // 2``.
        groups: upper bound of the groups of each branch convolution.
        reduction, min_hidden, round_to, hidden: the hidden width (``parts.hidden_width``):
            ``C // reduction`` rounded to a multiple of ``round_to``, at least ``min_hidden``;
            or ``hidden`` itself: the paper's d, with r = ``reduction`` and L = ``min_hidden``.
        split_input: give each branch its own 1/M slice of the input channels (timm's
            variant; C must then be divisible by M).
        act_layer: activation after each norm, called with no arguments.
        norm_layer: normalisation after each branch convolution and after the squeeze,
            called with the width; it receives ``(B, width, H, W)`` tensors.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``; recorded map part ``"select"``, kind
    ``"gate"``: the branch weights ``(B, M, C)``, summing to 1 over M.

    Example:
        >>> SelectiveKernel(64)(torch.randn(2, 64, 7, 5)).shape
        torch.Size([2, 64, 7, 5])
    """

    family = "channel"
    paper = "Li et al. 2019, Selective Kernel Networks"
    complexity = "O(N)"

    def __init__(
        self,
        channels: int,
        *,
        kernel_sizes: tuple[int, ...] = (3, 5),
        dilate: bool = True,
        groups: int = 32,
        reduction: int = 16,
        min_hidden: int = 32,
        round_to: int = 1,
        hidden: int | None = None,
        split_input: bool = False,
        act_layer: Callable[[], nn.Module] = nn.ReLU,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__(channels)
        self.kernel_sizes = _check_kernels(kernel_sizes)
        self.groups = check_int("groups", groups)
        self.split_input = split_input
        branches = len(self.kernel_sizes)
        if split_input and channels % branches:
            raise ValueError(
                f"split_input needs channels ({channels}) divisible by the number of branches "
                f"({branches}, from kernel_sizes={self.kernel_sizes})"
            )
        in_width = channels // branches if split_input else channels
        self.branch_groups = largest_divisor(math.gcd(in_width, channels), groups)
        self.hidden = hidden_width(channels, reduction, min_hidden, round_to, hidden)
        self.branches = nn.ModuleList()
        for k in self.kernel_sizes:
            kernel, dilation = (3, (k - 1) // 2) if dilate else (k, 1)
            padding = dilation * (kernel - 1) // 2  # keeps H x W
            conv = nn.Conv2d(in_width, channels, kernel, padding=padding, dilation=dilation,
                             groups=self.branch_groups, bias=False)  # fmt: skip
            self.branches.append(nn.Sequential(conv, norm_layer(channels), act_layer()))
        # The squeeze runs on the pooled (B, C, 1, 1) tensor so that one norm_layer serves both.
        self.squeeze = nn.Sequential(
            nn.Conv2d(channels, self.hidden, 1, bias=False), norm_layer(self.hidden), act_layer()
        )
        self.select = nn.Conv2d(self.hidden, branches * channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        B, C = x.shape[:2]
        M = len(self.branches)
        inputs = x.chunk(M, dim=1) if self.split_input else [x] * M
        paths = [branch(part) for branch, part in zip(self.branches, inputs, strict=True)]  # M x (B, C, H, W)
        fused = paths[0]
        for path in paths[1:]:
            fused = fused + path  # (B, C, H, W)
        z = self.squeeze(fused.mean((2, 3), keepdim=True))  # (B, d, 1, 1)
        weights = self.select(z).view(B, M, C).softmax(dim=1)  # (B, M, C)
        self.keep_map(weights, kind="gate", part="select")
        out = paths[0] * weights[:, 0, :, None, None]
        for m in range(1, M):
            out = out + paths[m] * weights[:, m, :, None, None]  # (B, C, H, W)
        return out

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, kernel_sizes={self.kernel_sizes}, groups={self.branch_groups}, "
            f"hidden={self.hidden}, split_input={self.split_input}"
        )
