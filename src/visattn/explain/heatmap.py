"""Turn recorded attention maps into per-pixel heat maps of the input size.

A softmax map ``(B, heads, N, N)`` over the positions of an H x W grid becomes the attention
each position *receives*, averaged over heads and queries: where the network gathers its
evidence from. A spatial gate ``(B, 1, h, w)`` is used as it is. Both are resized to the
input with bilinear interpolation and scaled to [0, 1] per image. Channel gates ``(B, C)``
carry no spatial information and are refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..maps import AttentionMaps, record_attention


def map_to_heatmap(attn: Tensor, grid: tuple[int, int] | None, size: tuple[int, int]) -> Tensor:
    """One recorded map -> ``(B, H, W)`` heat in [0, 1] at the input ``size`` (H, W).

    Args:
        attn: a recorded map: ``(B, heads, N, N)`` softmax weights over a grid, or a
            ``(B, 1, h, w)`` spatial gate.
        grid: the ``(h, w)`` of the positions of a softmax map (``AttentionMaps.grid``).
        size: the input image size.
    """
    if attn.ndim == 4 and grid is not None and attn.shape[-1] == grid[0] * grid[1]:
        received = attn.float().mean(dim=(1, 2))  # (B, N): averaged over heads and queries
        heat = received.view(-1, 1, *grid)  # (B, 1, h, w)
    elif attn.ndim == 4 and attn.shape[1] == 1 and grid is None:
        heat = attn.float()  # (B, 1, h, w)
    else:
        raise ValueError(
            f"cannot make a spatial heat map from an attention map of shape {tuple(attn.shape)} "
            f"(grid {grid}); spatial maps are (B, heads, N, N) over a grid or (B, 1, H, W)"
        )
    heat = F.interpolate(heat, size=size, mode="bilinear", align_corners=False)[:, 0]  # (B, H, W)
    low = heat.amin(dim=(1, 2), keepdim=True)
    span = heat.amax(dim=(1, 2), keepdim=True) - low
    return (heat - low) / span.clamp_min(torch.finfo(heat.dtype).tiny)


def spatial_map_names(maps: AttentionMaps) -> list[str]:
    """Names of the recorded maps that ``map_to_heatmap`` can turn into images."""
    names = []
    for name, attn in maps.items():
        grid = maps.grid(name)
        if attn.ndim == 4 and (
            (grid is not None and attn.shape[-1] == grid[0] * grid[1])
            or (grid is None and attn.shape[1] == 1)
        ):
            names.append(name)
    return names


@torch.no_grad()
def model_heatmap(
    model: nn.Module, images: Tensor, *, layer: str | None = None
) -> tuple[Tensor, Tensor, str]:
    """Run ``model`` on ``images`` while recording, and return ``(logits, heat, layer)``.

    Args:
        model: any model holding visattn attention modules.
        images: ``(B, C, H, W)`` normalised input.
        layer: qualified name of the attention module to use; the last spatial map of the
            forward pass (the one closest to the classifier) when ``None``.

    Returns:
        logits ``(B, classes)``, heat ``(B, H, W)`` in [0, 1], and the layer used.
    """
    with record_attention(model) as maps:
        logits = model(images)
    names = spatial_map_names(maps)
    if not names:
        raise ValueError("the model recorded no spatial attention map (is its attention 'none'?)")
    if layer is None:
        layer = names[-1]
    elif layer not in names:
        raise ValueError(f"no spatial attention map named {layer!r}; recorded: {', '.join(names)}")
    return logits, map_to_heatmap(maps[layer], maps.grid(layer), tuple(images.shape[-2:])), layer


def pointing_hits(heat: Tensor, boxes: Tensor, *, tolerance: int = 0) -> Tensor:
    """The pointing game (Zhang et al. 2016, arXiv:1608.00507): does each heat map's maximum
    fall inside its object's box?

    Args:
        heat: ``(B, H, W)``.
        boxes: ``(B, 4)`` as ``(x0, y0, x1, y1)`` with exclusive ends.
        tolerance: pixels by which each box is grown on every side (the paper uses 15 at
            ImageNet resolution; 0 asks for a strict hit).

    Returns:
        bool ``(B,)``.
    """
    if heat.ndim != 3 or boxes.shape != (heat.shape[0], 4):
        raise ValueError(
            "pointing_hits expects heat (B, H, W) and boxes (B, 4), "
            f"got {tuple(heat.shape)} and {tuple(boxes.shape)}"
        )
    width = heat.shape[-1]
    peak = heat.flatten(1).argmax(dim=1)  # (B,)
    y, x = peak // width, peak % width
    b = boxes.to(heat.device)
    return (
        (x >= b[:, 0] - tolerance)
        & (x < b[:, 2] + tolerance)
        & (y >= b[:, 1] - tolerance)
        & (y < b[:, 3] + tolerance)
    )
