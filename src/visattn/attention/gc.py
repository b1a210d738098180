"""Global Context block: softmax attention pooling over positions, a bottleneck transform,
fused into every position.

Cao, Xu, Lin, Wei and Hu, "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and
Beyond", ICCV Workshops 2019, arXiv:1904.11492.

Deviations from the paper: none in the function computed. The context logit ``W_k x_j`` has
no bias: a constant added to every logit cancels in the softmax (the official code's bias
receives a zero gradient), and without it the pooling is exactly one-query attention, computed
as a softmax over the N logits and one matrix-vector product (no N x N tensor exists, so the
fused kernel would only add a copy into token layout). The hidden width ``C // r`` is floored at
``min_hidden`` (8) so that small C work. Defaults follow the paper's chosen configuration:
r = 16, LayerNorm in the bottleneck (eps 1e-5 as the official ``nn.LayerNorm``), fusion by
addition, last layer of each transform initialised to zero (as the official code).

timm's ``GlobalContext`` defaults differ: multiplicative fusion (a sigmoid channel gate),
r = 8 rounded to the nearest integer, LayerNorm eps 1e-6, only the weight of the additive
branch's last layer zeroed. ``fusion="scale", reduction=8, min_hidden=1,
norm_layer=partial(nn.LayerNorm, eps=1e-6)`` reproduces it for C divisible by 8.

Reference checked against: timm ``timm.layers.GlobalContext`` with fusion by addition, by
scaling and both (same weights, outputs within 1e-5).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from torch import Tensor, nn

from .._checks import check_choice
from ..registry import ATTENTION
from .base import AttentionModule
from .parts import hidden_width

FUSIONS = ("add", "scale", "both")


def _bottleneck(
    channels: int,
    hidden: int,
    act_layer: Callable[[], nn.Module],
    norm_layer: Callable[[int], nn.Module],
    zero_last: bool,
) -> nn.Sequential:
    transform = nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(channels, hidden),
            norm=norm_layer(hidden),
            act=act_layer(),
            fc2=nn.Linear(hidden, channels),
        )
    )
    if zero_last:
        # The block starts as the identity (add) or as a constant 0.5 gate (scale), as the
        # official code initialises it.
        nn.init.zeros_(transform.fc2.weight)
        nn.init.zeros_(transform.fc2.bias)
    return transform


@ATTENTION.register("gc")
class GlobalContext(AttentionModule):
    """Global Context block.

    ``a = softmax_j(w_k . x_j)`` over the H*W positions, ``c = sum_j a_j x_j`` (B, C); then
    ``y = x + T_add(c)`` (fusion ``"add"``), ``y = x * gate(T_scale(c))`` (``"scale"``), or
    ``y = x * gate(T_scale(c)) + T_add(c)`` (``"both"``), where each ``T`` is
    ``fc(C -> hidden) -> norm -> act -> fc(hidden -> C)`` and the result is broadcast over
    the positions.

    Args:
        channels: input and output width C.
        reduction, min_hidden, round_to, hidden: the hidden width (``parts.hidden_width``):
            ``C // reduction`` rounded to a multiple of ``round_to``, at least ``min_hidden``;
            or ``hidden`` itself.
        fusion: ``"add"`` (the paper), ``"scale"`` (timm's default) or ``"both"``.
        act_layer: activation inside the transform, called with no arguments.
        gate_layer: gate of the multiplicative fusion, called with no arguments; it must
            map to [0, 1].
        norm_layer: normalisation inside the transform, called with the hidden width.
        zero_init_last: initialise the last layer of each transform to zero.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``. Recorded maps: part ``"context"``, kind
    ``"softmax"`` ``(B, 1, 1, H*W)`` with grid ``(H, W)``: the pooling weights; with
    multiplicative fusion also part ``"gate"``, kind ``"channel"`` ``(B, C)``.

    Example:
        >>> GlobalContext(64)(torch.randn(2, 64, 7, 5)).shape
        torch.Size([2, 64, 7, 5])
    """

    family = "channel"
    paper = "Cao et al. 2019, GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond"
    complexity = "O(N)"

    def __init__(
        self,
        channels: int,
        *,
        reduction: int = 16,
        min_hidden: int = 8,
        round_to: int = 1,
        hidden: int | None = None,
        fusion: str = "add",
        act_layer: Callable[[], nn.Module] = nn.ReLU,
        gate_layer: Callable[[], nn.Module] = nn.Sigmoid,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        zero_init_last: bool = True,
    ) -> None:
        super().__init__(channels)
        self.hidden = hidden_width(channels, reduction, min_hidden, round_to, hidden)
        self.fusion = check_choice("fusion", fusion, FUSIONS)
        # W_k of the paper: one logit per position, a 1x1 convolution to a single channel.
        self.key = nn.Linear(channels, 1, bias=False)
        nn.init.kaiming_normal_(self.key.weight, mode="fan_in", nonlinearity="relu")
        args = (channels, self.hidden, act_layer, norm_layer, zero_init_last)
        self.transform_scale = _bottleneck(*args) if fusion in ("scale", "both") else None
        self.gate = gate_layer() if fusion in ("scale", "both") else None
        self.transform_add = _bottleneck(*args) if fusion in ("add", "both") else None

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        B, C, H, W = x.shape
        # One query (W_k itself, logits unscaled as in the paper): the weights are a softmax
        # over N logits and the context one matrix-vector product per sample -- nothing N x N
        # exists, so the fused kernel has nothing to save and would only force a copy of the
        # map into token layout (measured slower than timm at 32x32 and above). One path for
        # running and recording.
        flat = x.flatten(2)  # (B, C, N), a view in both memory formats
        # The key weight expanded to (B, 1, C) makes one bmm; matmul's own broadcast of a
        # (1, 1, C) operand folds the batch the slow way (measured 25x slower at 64x64).
        weights = (self.key.weight.view(1, 1, C).expand(B, 1, C) @ flat).softmax(dim=-1)  # (B, 1, N)
        self.keep_map(weights.unsqueeze(1), kind="softmax", grid=(H, W), part="context")  # (B, 1, 1, N)
        context = flat @ weights.transpose(1, 2)  # (B, C, 1)
        context = context.view(B, C)  # (B, C)
        out = x
        if self.transform_scale is not None and self.gate is not None:
            gate = self.gate(self.transform_scale(context))  # (B, C)
            self.keep_map(gate, kind="channel", part="gate")
            out = out * gate[:, :, None, None]
        if self.transform_add is not None:
            out = out + self.transform_add(context)[:, :, None, None]  # (B, C, H, W)
        return out

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden}, fusion={self.fusion!r}"
