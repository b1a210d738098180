"""Dual Attention: position attention (PAM) and channel attention (CAM) modules, in parallel.

Fu et al., CVPR 2019, "Dual Attention Network for Scene Segmentation", arXiv:1809.02983.
PAM: ``E_p = x + gamma_p * sum_j softmax_j(B_i . C_j) D_j`` with B, C 1x1 convolutions to C/8
and D to C. CAM (eq. 3): ``E_c = x + gamma_c * softmax(A A^T) A`` with A the (C, N) input.
Both gammas start at zero.

Deviations from the paper:
- Drop-in form: the two modules run on the same input and their outputs are summed with the
  shared input counted once, ``y = x + gamma_p * PAM(x) + gamma_c * CAM(x)`` (the paper sums
  the two branches after a 3x3 conv-BN-ReLU each, inside its segmentation head; those
  convolutions are left to the host network). At initialisation the block is the identity.
- CAM's energy follows eq. 3, ``softmax(E)``, by default (``cam_energy="paper"``). The
  authors' released code computes ``softmax(rowmax(E) - E)``, which equals ``softmax(-E)``:
  each channel attends most to the channels least similar to it; ``cam_energy="max_minus"``
  reproduces it, and the tests show that the two differ.
- ``branches`` can keep one module only.

Reference checked against: no installable reference; a float64 re-implementation of the
equations in the tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_choice
from ..functional import attention
from ..registry import ATTENTION
from .base import AttentionModule
from .parts import hidden_width


@ATTENTION.register("danet")
class DualAttention(AttentionModule):
    """DANet's position and channel attention modules on one feature map, summed.

    Args:
        channels: input and output width C.
        reduction, min_hidden, round_to, hidden: the query / key width ``inner`` of the
            position module (``parts.hidden_width``): ``C // reduction`` rounded to a
            multiple of ``round_to``, at least ``min_hidden``; or ``hidden`` itself (paper:
            C / 8).
        cam_energy: ``"max_minus"`` (authors' code) or ``"paper"`` (eq. 3), see the module
            docstring.
        branches: ``"both"``, ``"position"`` or ``"channel"``.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``; recorded maps ``position`` ``(B, 1, H*W, H*W)``
    and ``channel`` ``(B, 1, C, C)``.

    Example:
        >>> DualAttention(64)(torch.randn(2, 64, 14, 9)).shape
        torch.Size([2, 64, 14, 9])
    """

    family = "global"
    paper = "Fu et al. 2019, Dual Attention Network for Scene Segmentation"
    complexity = "O(N²)"

    def __init__(
        self,
        channels: int,
        *,
        reduction: int = 8,
        min_hidden: int = 1,
        round_to: int = 1,
        hidden: int | None = None,
        cam_energy: str = "paper",
        branches: str = "both",
    ) -> None:
        super().__init__(channels)
        self.cam_energy = check_choice("cam_energy", cam_energy, ("max_minus", "paper"))
        self.branches = check_choice("branches", branches, ("both", "position", "channel"))
        self.inner = hidden_width(channels, reduction, min_hidden, round_to, hidden)
        if branches != "channel":
            self.qkv = nn.Linear(channels, 2 * self.inner + channels)  # query | key | value
            self.gamma_position = nn.Parameter(torch.zeros(1))
        if branches != "position":
            self.gamma_channel = nn.Parameter(torch.zeros(1))

    def position(self, x: Tensor) -> Tensor:
        """PAM without gamma and residual: ``(B, C, H, W) -> (B, C, H, W)``."""
        B, C, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        q, k, v = self.qkv(tokens).unsqueeze(1).split((self.inner, self.inner, C), -1)  # (B, 1, N, *)
        # The CPU flash kernel needs query and value widths equal (else it materialises the
        # N x N scores): zero-pad q and k to C, which leaves q . k unchanged.
        q, k = F.pad(q, (0, C - self.inner)), F.pad(k, (0, C - self.inner))  # (B, 1, N, C)
        out, weights = attention(q, k, v, scale=1.0, need_weights=self.recording)  # (B, 1, N, C)
        if weights is not None:
            self.keep_map(weights, kind="softmax", grid=(H, W), part="position")  # (B, 1, N, N)
        return out.squeeze(1).transpose(1, 2).reshape(B, C, H, W)

    def channel(self, x: Tensor) -> Tensor:
        """CAM without gamma and residual: ``(B, C, H, W) -> (B, C, H, W)``."""
        B, C, H, W = x.shape
        feats = x.reshape(B, 1, C, H * W)  # (B, 1, C, N): channels are the tokens
        # softmax(rowmax(E) - E) == softmax(-E): the row maximum is a per-row constant, and
        # the softmax subtracts its own maximum for stability. So the query is -A.
        query = -feats if self.cam_energy == "max_minus" else feats
        out, weights = attention(query, feats, feats, scale=1.0, need_weights=self.recording)  # (B, 1, C, N)
        if weights is not None:
            self.keep_map(weights, kind="softmax", part="channel")  # (B, 1, C, C)
        return out.reshape(B, C, H, W)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        out = x
        if self.branches != "channel":
            out = out + self.gamma_position * self.position(x)
        if self.branches != "position":
            out = out + self.gamma_channel * self.channel(x)
        return out

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, inner={self.inner}, cam_energy={self.cam_energy!r}, "
            f"branches={self.branches!r}"
        )
