"""Polarized self-attention: a channel-only and a spatial-only branch at full resolution.

Liu, Liu, Fan and Huang, "Polarized Self-Attention: Towards High-quality Pixel-wise
Regression", 2021, arXiv:2107.00782. Channel-only branch:
``A_ch = sigmoid(LN(W_z(W_v(X) softmax(W_q(X)))))`` with ``W_q`` a 1x1 convolution to one
channel whose softmax runs over the H*W positions, ``W_v`` to C/2 and ``W_z`` back to C
(``(B, C)`` gate). Spatial-only branch: ``A_sp = sigmoid(softmax(GAP(W_q'(X)))^T
W_v'(X))`` with ``W_q'``, ``W_v'`` to C/2 and the softmax over those C/2 channels
(``(B, 1, H, W)`` gate). Parallel layout: ``Z = A_ch * X + A_sp * X``; sequential:
``Z = A_sp(Y) * Y`` with ``Y = A_ch(X) * X``.

Deviations from the paper: none. The channel-only branch's softmax over positions is
softmax attention of one query over the H*W keys ``W_q(x_n)`` (scale 1) with values
``W_v(x_n)``: it runs through ``visattn.attention`` so that the weights are only returned
while recording. (PyTorch's CPU flash kernel wants equal query and value widths, 1 and C/2
here, so it picks its math path; with a single query that path holds only ``1 x N`` scores,
nothing quadratic.) ``W_q`` has no bias (a shift common to all positions cancels in the
softmax). The authors' released code differs from the paper's equations: it has no LayerNorm
in the channel-only branch and applies a softmax over positions before the spatial-only
sigmoid; this module follows the paper. The 1x1 convolutions are linear layers on the
``(B, N, C)`` tokens, the same function.

Reference checked against: no installable implementation; a float64 re-implementation of
the paper's equations with einsums in tests/attention/test_polarized.py.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .._checks import check_choice, check_int
from ..functional import attention
from ..registry import ATTENTION
from .base import AttentionModule


@ATTENTION.register("polarized")
class PolarizedSelfAttention(AttentionModule):
    """Polarized self-attention (PSA), parallel or sequential layout.

    Args:
        channels: input and output width C (>= 2; the inner width is ``C // 2``).
        layout: ``"parallel"`` (PSA_p, the default) or ``"sequential"`` (PSA_s).
        bias: biases in ``W_v``, ``W_z``, ``W_q'`` and ``W_v'``.
        norm_layer: the channel-only branch's norm, called with C (LayerNorm).
        gate_layer: the gate (sigmoid), called with no arguments; it must map to [0, 1].

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``. Recorded maps: ``"channel"`` (kind channel,
    ``(B, C)``: ``A_ch``), ``"spatial"`` (kind spatial, ``(B, 1, H, W)``: ``A_sp``) and
    ``"positions"`` (kind softmax, ``(B, 1, 1, H*W)`` with grid ``(H, W)``: the channel-only
    branch's softmax over positions).

    Example:
        >>> PolarizedSelfAttention(64)(torch.randn(2, 64, 7, 5)).shape
        torch.Size([2, 64, 7, 5])
    """

    family = "channel-spatial"
    paper = "Liu et al. 2021, Polarized Self-Attention: Towards High-quality Pixel-wise Regression"
    complexity = "O(N)"

    def __init__(
        self,
        channels: int,
        *,
        layout: str = "parallel",
        bias: bool = False,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        gate_layer: Callable[[], nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__(channels)
        check_int("channels", channels, minimum=2)
        self.layout = check_choice("layout", layout, ("parallel", "sequential"))
        inner = channels // 2
        self.ch_query = nn.Linear(channels, 1, bias=False)
        self.ch_value = nn.Linear(channels, inner, bias=bias)
        self.ch_out = nn.Linear(inner, channels, bias=bias)
        self.ch_norm = norm_layer(channels)
        self.sp_query = nn.Linear(channels, inner, bias=bias)
        self.sp_key = nn.Linear(channels, inner, bias=bias)
        self.ch_gate = gate_layer()
        self.sp_gate = gate_layer()

    def channel_gate(self, x: Tensor) -> Tensor:
        """``A_ch(x)``: ``(B, C)``."""
        B, _, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        keys = self.ch_query(tokens).unsqueeze(1)  # (B, 1, N, 1): one score per position
        values = self.ch_value(tokens).unsqueeze(1)  # (B, 1, N, C/2)
        query = keys.new_ones(B, 1, 1, 1)  # score_n = 1 * W_q(x_n)
        pooled, weights = attention(query, keys, values, scale=1.0, need_weights=self.recording)
        if weights is not None:
            self.keep_map(weights, kind="softmax", grid=(H, W), part="positions")  # (B, 1, 1, N)
        gate = self.ch_gate(self.ch_norm(self.ch_out(pooled.view(B, -1))))  # (B, C)
        self.keep_map(gate, kind="channel", part="channel")
        return gate

    def spatial_gate(self, x: Tensor) -> Tensor:
        """``A_sp(x)``: ``(B, 1, H, W)``."""
        B, _, H, W = x.shape
        # GAP commutes with the affine W_q': pool first, project the (B, C) mean.
        query = self.sp_query(x.mean((2, 3))).softmax(-1)  # (B, C/2)
        keys = self.sp_key(x.flatten(2).transpose(1, 2))  # (B, N, C/2)
        gate = self.sp_gate(keys @ query.unsqueeze(-1))  # (B, N, 1)
        gate = gate.transpose(1, 2).reshape(B, 1, H, W)  # (B, 1, H, W)
        self.keep_map(gate, kind="spatial", part="spatial")
        return gate

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        z_ch = x * self.channel_gate(x)[:, :, None, None]  # (B, C, H, W)
        if self.layout == "sequential":
            return z_ch * self.spatial_gate(z_ch)
        return z_ch + x * self.spatial_gate(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, layout={self.layout!r}"
