"""BAM: a channel branch and a dilated spatial branch, summed into one gate with a residual.

Park, Woo, Lee and Kweon, "BAM: Bottleneck Attention Module", BMVC 2018, arXiv:1807.06514.
Eq. (1)-(4): ``M(F) = sigmoid(Mc(F) + Ms(F))`` broadcast to C x H x W and
``F' = F + F * M(F)``, with ``Mc(F) = BN(MLP(AvgPool(F)))`` (one hidden layer of width
``C / r``) and ``Ms(F) = BN(f1x1(f3x3(f3x3(f1x1(F)))))`` (1x1 reduction to ``C / r``, two 3x3
convolutions with dilation 4, 1x1 to one channel).

Deviations from the paper: the hidden width is ``C // reduction`` floored at ``min_hidden``
(8), which binds only below C = 128 at r = 16 (``min_hidden=1`` gives the paper's width). The
paper's equation of the spatial branch names only the convolutions; like the authors'
released code, each inner convolution is followed by BatchNorm and ReLU (without them the
four convolutions would collapse into one linear map). As the paper says, and unlike that
code, each branch ends with its BatchNorm, the pooling averages over the whole H x W (the
released code pools a square window of side H), and the branches are summed (the released
code multiplies them). Convolutions directly followed by a norm have no bias. While
training, the channel branch's BatchNorm sees one value per channel and sample, so it needs
batches of at least 2 (PyTorch raises otherwise), as in the paper's design.

Reference checked against: no installable implementation; a float64 re-implementation of
the paper's equations in tests/attention/test_bam.py (explicit taps for the dilated convolutions) and
properties of the gate.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .._checks import check_int
from ..registry import ATTENTION
from .base import AttentionModule
from .parts import hidden_width


@ATTENTION.register("bam")
class BAM(AttentionModule):
    """Bottleneck Attention Module: ``y = x * (1 + sigmoid(Mc(x) + Ms(x)))``.

    Args:
        channels: input and output width C.
        reduction, min_hidden, round_to, hidden: the hidden width (``parts.hidden_width``):
            ``C // reduction`` rounded to a multiple of ``round_to``, at least ``min_hidden``;
            or ``hidden`` itself. Both branches use it.
        dilation: dilation of the two 3x3 convolutions of the spatial branch (4 in the
            paper); padding equals the dilation, so H x W is kept at any size.
        act_layer: activation inside both branches, called with no arguments.
        norm_layer: norm called with a width (BatchNorm2d in the paper); used inside the
            spatial branch and at the end of both branches (the channel branch is kept as a
            ``(B, C, 1, 1)`` tensor so that the same 2-D norm applies).
        gate_layer: the gate (sigmoid), called with no arguments; it must map to [0, 1].

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``. Recorded map: kind ``"spatial"``
    ``(B, 1, H, W)``, the mean over channels of the full gate ``sigmoid(Mc + Ms)`` that
    multiplies the input (the channel branch alone is never applied, so it is not recorded).

    Example:
        >>> BAM(64)(torch.randn(2, 64, 7, 5)).shape
        torch.Size([2, 64, 7, 5])
    """

    family = "channel-spatial"
    paper = "Park et al. 2018, BAM: Bottleneck Attention Module"
    complexity = "O(N)"

    def __init__(
        self,
        channels: int,
        *,
        reduction: int = 16,
        min_hidden: int = 8,
        round_to: int = 1,
        hidden: int | None = None,
        dilation: int = 4,
        act_layer: Callable[[], nn.Module] = nn.ReLU,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        gate_layer: Callable[[], nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__(channels)
        self.hidden = hid = hidden_width(channels, reduction, min_hidden, round_to, hidden)
        self.dilation = check_int("dilation", dilation)
        # Channel branch on the pooled (B, C, 1, 1) vector: MLP, then the paper's BN.
        self.channel_branch = nn.Sequential(
            nn.Conv2d(channels, hid, 1),
            act_layer(),
            nn.Conv2d(hid, channels, 1, bias=False),
            norm_layer(channels),
        )
        layers: list[nn.Module] = [nn.Conv2d(channels, hid, 1, bias=False), norm_layer(hid), act_layer()]
        for _ in range(2):
            conv = nn.Conv2d(hid, hid, 3, padding=dilation, dilation=dilation, bias=False)
            layers += [conv, norm_layer(hid), act_layer()]
        layers += [nn.Conv2d(hid, 1, 1, bias=False), norm_layer(1)]
        self.spatial_branch = nn.Sequential(*layers)
        self.gate = gate_layer()

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        channel = self.channel_branch(x.mean((2, 3), keepdim=True))  # (B, C, 1, 1)
        spatial = self.spatial_branch(x)  # (B, 1, H, W)
        gate = self.gate(channel + spatial)  # (B, C, H, W)
        self.keep_map(gate.mean(1, keepdim=True), kind="spatial")  # (B, 1, H, W)
        return x + x * gate

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden}, dilation={self.dilation}"
