"""CBAM: a channel gate from average- and max-pooled descriptors, then a spatial gate.

Woo, Park, Lee and Kweon, "CBAM: Convolutional Block Attention Module", ECCV 2018,
arXiv:1807.06521. Eq. (2): ``Mc = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F)))`` with one
MLP (``W1 relu(W0 .)``, hidden width ``C / r``) shared by both descriptors; Eq. (3):
``Ms = sigmoid(f7x7([AvgPool_c(F'); MaxPool_c(F')]))`` on ``F' = Mc * F``; output
``Ms * F'``. No residual inside the module (it sits on the residual branch of a block) and a
7 x 7 kernel (not 49 wide).

Deviations from the paper: none by default, apart from the width floor: the hidden width is
``C // reduction`` floored at ``min_hidden`` (8), which binds only below C = 128 at r = 16;
``min_hidden=1`` gives the paper's width. The paper writes the MLP and the 7 x 7 convolution
without normalisation; the authors' released code (and timm) put a BatchNorm after the 7 x 7
convolution: ``spatial_norm=nn.BatchNorm2d`` reproduces that (the convolution then has no
bias, otherwise it has one). The released code's MLP also has biases (``mlp_bias=True``) and
stacks the spatial descriptors as [max; mean]; this module and timm keep the paper's
[mean; max] order.

Reference checked against: timm ``timm.layers.CbamModule`` with ``spatial_norm=nn.BatchNorm2d``
and ``hidden`` set to timm's width (timm rounds ``C / 16`` to the nearest integer, so at
C = 40 it uses 3 hidden units where ``C // 16`` is 2); same weights, outputs within 1e-5.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .._checks import check_odd
from ..registry import ATTENTION
from .base import AttentionModule
from .parts import hidden_width


@ATTENTION.register("cbam")
class CBAM(AttentionModule):
    """Convolutional Block Attention Module: ``y = Ms(F') * F'`` with ``F' = Mc(F) * F``.

    Args:
        channels: input and output width C.
        reduction, min_hidden, round_to, hidden: the hidden width (``parts.hidden_width``):
            ``C // reduction`` rounded to a multiple of ``round_to``, at least ``min_hidden``;
            or ``hidden`` itself.
        kernel_size: side of the spatial convolution (odd; 7 in the paper).
        mlp_bias: biases in the shared MLP (the paper's ``W0``, ``W1`` have none).
        act_layer: activation inside the MLP, called with no arguments.
        gate_layer: the gate (sigmoid), called with no arguments; it must map to [0, 1].
        spatial_norm: optional norm after the spatial convolution, called with 1 (e.g.
            ``nn.BatchNorm2d`` as in the authors' code and timm); ``None`` for the paper's
            equation, in which case the convolution has a bias.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``. Recorded maps: ``"channel"`` (kind channel,
    ``(B, C)``: ``Mc``) and ``"spatial"`` (kind spatial, ``(B, 1, H, W)``: ``Ms``).

    Example:
        >>> CBAM(64)(torch.randn(2, 64, 7, 5)).shape
        torch.Size([2, 64, 7, 5])
    """

    family = "channel-spatial"
    paper = "Woo et al. 2018, CBAM: Convolutional Block Attention Module"
    complexity = "O(N)"

    def __init__(
        self,
        channels: int,
        *,
        reduction: int = 16,
        min_hidden: int = 8,
        round_to: int = 1,
        hidden: int | None = None,
        kernel_size: int = 7,
        mlp_bias: bool = False,
        act_layer: Callable[[], nn.Module] = nn.ReLU,
        gate_layer: Callable[[], nn.Module] = nn.Sigmoid,
        spatial_norm: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__(channels)
        self.hidden = hidden_width(channels, reduction, min_hidden, round_to, hidden)
        self.kernel_size = check_odd("kernel_size", kernel_size)
        # One MLP for both descriptors (Eq. 2 shares W0 and W1).
        self.mlp = nn.Sequential(
            nn.Linear(channels, self.hidden, bias=mlp_bias),
            act_layer(),
            nn.Linear(self.hidden, channels, bias=mlp_bias),
        )
        self.channel_gate = gate_layer()
        # Two input planes: the channel mean and the channel max, in the paper's order.
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=spatial_norm is None)
        self.norm = spatial_norm(1) if spatial_norm is not None else nn.Identity()
        self.spatial_gate = gate_layer()

    def gated(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        pooled = torch.stack((x.mean((2, 3)), x.amax((2, 3))))  # (2, B, C)
        channel = self.channel_gate(self.mlp(pooled).sum(0))  # (B, C)
        self.keep_map(channel, kind="channel", part="channel")
        x = x * channel[:, :, None, None]  # (B, C, H, W)
        # The two planes stacked last and viewed channels-first: a channels-last tensor, the
        # layout the convolution runs fastest in (and a channels-last network's weights use).
        planes = torch.stack((x.mean(1), x.amax(1)), dim=-1).permute(0, 3, 1, 2)  # (B, 2, H, W)
        spatial = self.spatial_gate(self.norm(self.conv(planes)))  # (B, 1, H, W)
        self.keep_map(spatial, kind="spatial", part="spatial")
        return x, spatial  # (B, C, H, W), (B, 1, H, W)

    def forward(self, x: Tensor) -> Tensor:
        base, gate = self.gated(x)
        return base * gate  # (B, C, H, W)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden}, kernel_size={self.kernel_size}"
