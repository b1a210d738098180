"""Criss-cross attention, recurrent (RCCA).

Huang et al., ICCV 2019, "CCNet: Criss-Cross Attention for Semantic Segmentation",
arXiv:1811.11721. Each position attends to the H + W - 1 positions of its row and column with
one softmax: ``y_u = x_u + gamma * sum_{p in row(u) + col(u)} softmax_p(Q_u . K_p) V_p``, Q and K
1x1 convolutions to C/8, V to C, gamma starting at zero. Applied ``recurrence`` times with
shared weights (paper: R = 2), so information reaches every position.

Deviations from the paper: none. The centre position is one of the H + W - 1 keys, as in the
paper; some released implementations add its logit twice (once from the row, once from the
column). The row/column energies are computed directly (O(N (H + W)) memory, no N x N tensor),
and the core's ``attention_weights`` turns them into weights (the centre masked out of the
row); there is no fused path: the joint softmax over a row and a column is not one call of
the fused kernel. Indices are built on the input's device.

Reference checked against: no installable reference; a float64 masked full attention (a
boolean mask allowing the row and the column) in the tests.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import check_int
from ..functional import attention_weights
from ..registry import ATTENTION
from .base import AttentionModule
from .parts import hidden_width


def _row_others(width: int, device: torch.device) -> Tensor:
    """``(W, W-1)`` int64: for query column x, the key columns other than x, in order."""
    slot = torch.arange(width - 1, device=device)
    col = torch.arange(width, device=device)[:, None]
    return slot + (slot >= col).long()  # (W, W-1)


@ATTENTION.register("criss_cross")
class CrissCrossAttention(AttentionModule):
    """Recurrent criss-cross attention: each position attends to its row and column.

    Args:
        channels: input and output width C.
        reduction, min_hidden, round_to, hidden: the query / key width
            (``parts.hidden_width``): ``C // reduction`` (paper: 8), at least ``min_hidden``,
            rounded to a multiple of ``round_to``; or ``hidden`` itself.
        recurrence: how many times the shared-weight module is applied (paper: 2).

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``; recorded ``"window"`` maps ``r0``, ``r1``, ... of
    shape ``(B, 1, H*W, H+W-1)``: slots ``0..H-1`` are the column (rows 0..H-1, the centre
    included), the last ``W-1`` the rest of the row.

    Example:
        >>> CrissCrossAttention(64)(torch.randn(2, 64, 14, 9)).shape
        torch.Size([2, 64, 14, 9])
    """

    family = "global"
    paper = "Huang et al. 2019, CCNet: Criss-Cross Attention for Semantic Segmentation"
    complexity = "O(N·(H+W))"

    def __init__(
        self,
        channels: int,
        *,
        reduction: int = 8,
        min_hidden: int = 1,
        round_to: int = 1,
        hidden: int | None = None,
        recurrence: int = 2,
    ) -> None:
        super().__init__(channels)
        self.recurrence = check_int("recurrence", recurrence)
        self.inner = hidden_width(channels, reduction, min_hidden, round_to, hidden)
        self.qkv = nn.Linear(channels, 2 * self.inner + channels)  # query | key | value
        self.gamma = nn.Parameter(torch.zeros(1))

    def attend(self, x: Tensor, part: str) -> Tensor:
        """One criss-cross pass, without gamma and residual: ``(B, C, H, W) -> (B, C, H, W)``."""
        B, C, H, W = x.shape
        qkv = self.qkv(x.permute(0, 2, 3, 1))  # (B, H, W, 2r + C)
        q, k, v = qkv.split((self.inner, self.inner, C), -1)
        q_col, k_col, v_col = (t.transpose(1, 2) for t in (q, k, v))  # (B, W, H, *)
        by_col = (q_col @ k_col.transpose(-1, -2)).transpose(1, 2)  # (B, H, W, Hk): key rows of col x
        by_row = q @ k.transpose(-1, -2)  # (B, H, W, Wk): key columns of row y
        # The centre is already a column key: take it out of the row (H + W - 1 keys).
        cols = torch.arange(W, device=x.device)
        others = torch.cat([torch.ones(W, H, dtype=torch.bool, device=x.device), cols[:, None] != cols], -1)
        logits = torch.cat([by_col, by_row], -1)  # (B, H, W, H + W): every row keeps its column
        weights = attention_weights(logits, mask=others, empty_rows=False)
        w_col, w_row = weights.split((H, W), -1)
        out = (w_col.transpose(1, 2) @ v_col).transpose(1, 2) + w_row @ v  # (B, H, W, C)
        if self.recording:
            others = _row_others(W, x.device)  # (W, W-1)
            w_others = w_row.gather(-1, others.expand(B, H, W, W - 1))  # (B, H, W, W-1)
            window = torch.cat([w_col, w_others], -1).reshape(B, 1, H * W, H + W - 1)
            rows = torch.arange(H, device=x.device)
            key_col = (rows[None, None, :] * W + cols[None, :, None]).expand(H, W, H)  # (H, W, H)
            key_row = rows[:, None, None] * W + others[None]  # (H, W, W-1)
            keys = torch.cat([key_col, key_row], -1).reshape(H * W, H + W - 1)
            self.keep_map(window, kind="window", grid=(H, W), keys=keys, part=part)
        return out.permute(0, 3, 1, 2)  # (B, C, H, W)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        for r in range(self.recurrence):
            x = x + self.gamma * self.attend(x, f"r{r}")
        return x

    def extra_repr(self) -> str:
        return f"channels={self.channels}, inner={self.inner}, recurrence={self.recurrence}"
