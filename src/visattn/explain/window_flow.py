"""Rollout and gradient-weighted attention through windowed, hierarchical transformers (Swin).

A window map ``(B, heads, P, K)`` with its key index ``(P, K)`` is one sparse ``P x P``
layer: position ``p`` reads from ``keys[p, j]`` (padding slots, -1, lead nowhere). Layers of
one stage are multiplied as in a plain transformer, the shifts being already in the key
index. Patch merging joins each 2x2 block of positions (the last row or column alone on an
odd side) into one token; the flow through it is shared equally by the block's positions.

Swin has no class token and pools the mean of its last stage, so the map is the flow that
reaches each first-stage position from the mean of the last one. That is a row vector
times the chain of layers, ``(1/P) 1^T A_L ... M ... A_1``, computed right to left from the
output in ``O(P K)`` per layer instead of dense ``P x P`` products.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _read(vector: Tensor, weights: Tensor, keys: Tensor, identity: Tensor) -> Tensor:
    """``v A`` for ``A = diag(identity) + W`` with sparse ``W``: ``(B, P)`` -> ``(B, P)``."""
    valid = keys >= 0
    flow = vector[:, :, None] * weights  # (B, P, K)
    out = vector * identity
    return out.index_add(1, keys[valid], flow[:, valid])


def _unmerge(vector: Tensor, coarse: tuple[int, int], fine: tuple[int, int]) -> Tensor:
    """``v M`` for patch merging ``fine -> coarse``: each fine position gets its merged
    token's flow divided among the token's positions. ``(B, h*w) -> (B, H*W)``."""
    (h, w), (H, W) = coarse, fine
    if (h, w) != ((H + 1) // 2, (W + 1) // 2):
        raise ValueError(f"window maps over grids {fine} then {coarse} are not one 2x2 patch merging apart")
    rows, cols = torch.arange(H, device=vector.device) // 2, torch.arange(W, device=vector.device) // 2
    parent = (rows[:, None] * w + cols[None, :]).flatten()  # (H*W,)
    children = torch.bincount(parent, minlength=h * w).to(vector.dtype)
    return (vector / children)[:, parent]


def window_flow(
    layers: list[tuple[Tensor, Tensor, tuple[int, int]]], *, normalise_rows: bool
) -> tuple[Tensor, tuple[int, int]]:
    """Mean-of-output flow back to the first layer's positions.

    Args:
        layers: per layer in forward order, ``(weights, keys, grid)``: fused weights
            ``(B, P, K)`` (heads already merged), the key index ``(P, K)`` and the ``(h, w)``
            grid with ``h * w == P``.
        normalise_rows: rollout: ``A = (W + I)`` with rows renormalised over the real keys;
            otherwise (gradient-weighted relevance) ``A = I + W`` as it is.

    Returns:
        ``(B, P_1)`` flow per first-layer position, and that layer's grid.
    """
    weights, _, grid = layers[-1]
    vector = weights.new_full((weights.shape[0], grid[0] * grid[1]), 1.0 / (grid[0] * grid[1]))
    for index in range(len(layers) - 1, -1, -1):
        weights, keys, grid = layers[index]
        keys = keys.to(weights.device)
        real = torch.where(keys[None] >= 0, weights, 0.0)  # (B, P, K)
        identity = torch.ones_like(vector)
        if normalise_rows:
            total = real.sum(dim=-1) + 1.0  # (B, P)
            real, identity = real / total[..., None], identity / total
        vector = _read(vector, real, keys, identity)
        if index > 0 and layers[index - 1][2] != grid:
            vector = _unmerge(vector, grid, layers[index - 1][2])
    return vector, layers[0][2]
