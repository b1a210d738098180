"""Turn recorded attention maps into per-pixel heat maps of the input size.

Softmax and window maps whose keys are spatial positions become the attention each
position *receives*, averaged over heads and queries: where the network gathers its
evidence from. A vision transformer's leading class and register keys are left out.
Spatial gates ``(B, 1, h, w)`` are used as they are. All are resized to the input with
bilinear interpolation and scaled to [0, 1] per image. Channel gates, and softmax
maps over channels or memory slots, carry no spatial information and are refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..maps import AttentionMaps, record_attention
from .request import evaluating


def received_attention(attn: Tensor, keys: Tensor, positions: int) -> Tensor:
    """Window map ``(B, heads, Nq, K)`` -> ``(B, positions)``: for each position, the weight
    it receives from all queries, averaged over heads and queries. ``keys`` ``(Nq, K)``
    holds the flat position behind each slot (-1 for padding, which is skipped)."""
    b = attn.shape[0]
    weights = attn.float().mean(dim=1).reshape(b, -1)  # (B, Nq*K)
    index = keys.reshape(-1).to(attn.device)
    valid = index >= 0
    received = torch.zeros(b, positions, device=attn.device)
    received.index_add_(1, index[valid], weights[:, valid])
    return received / attn.shape[2]


def map_to_heatmap(
    attn: Tensor,
    kind: str,
    grid: tuple[int, int] | None,
    size: tuple[int, int],
    *,
    keys: Tensor | None = None,
    prefix: int = 0,
) -> Tensor:
    """One recorded map -> ``(B, H, W)`` heat in [0, 1] at the input ``size`` (H, W).

    Args:
        attn: a recorded map (see ``AttentionMaps``).
        kind: its kind (``AttentionMaps.kind``).
        grid: its grid (``AttentionMaps.grid``).
        size: the input image size.
        keys: the slot-to-position index of a window map (``AttentionMaps.keys_index``).
        prefix: leading keys of a softmax map that are not positions
            (``AttentionMaps.prefix_tokens``).
    """
    if _is_spatial_softmax(attn, kind, grid, prefix):
        heat = attn[..., prefix:].float().mean(dim=(1, 2)).view(-1, 1, *grid)  # (B, 1, h, w)
    elif kind == "window" and grid is not None and keys is not None:
        heat = received_attention(attn, keys, grid[0] * grid[1]).view(-1, 1, *grid)
    elif kind == "spatial" and attn.ndim == 4 and attn.shape[1] == 1:
        heat = attn.float()  # (B, 1, h, w)
    else:
        raise ValueError(
            f"cannot make a spatial heat map from a {kind} map of shape {tuple(attn.shape)} "
            f"(grid {grid}); spatial maps are softmax or window maps over positions, or spatial gates"
        )
    heat = F.interpolate(heat, size=size, mode="bilinear", align_corners=False)[:, 0]  # (B, H, W)
    low = heat.amin(dim=(1, 2), keepdim=True)
    span = heat.amax(dim=(1, 2), keepdim=True) - low
    return (heat - low) / span.clamp_min(torch.finfo(heat.dtype).tiny)


def _is_spatial_softmax(attn: Tensor, kind: str, grid: tuple[int, int] | None, prefix: int) -> bool:
    return (
        kind == "softmax"
        and grid is not None
        and attn.ndim == 4
        and attn.shape[-1] == prefix + grid[0] * grid[1]
    )


def maps_heatmap(maps: AttentionMaps, name: str, size: tuple[int, int]) -> Tensor:
    """``map_to_heatmap`` for the recorded map ``name``."""
    return map_to_heatmap(
        maps[name],
        maps.kind(name),
        maps.grid(name),
        size,
        keys=maps.keys_index(name),
        prefix=maps.prefix_tokens(name),
    )


def spatial_map_names(maps: AttentionMaps) -> list[str]:
    """Names of the recorded maps that can be turned into heat maps, in forward order."""
    names = []
    for name, attn in maps.items():
        kind, grid = maps.kind(name), maps.grid(name)
        if (
            _is_spatial_softmax(attn, kind, grid, maps.prefix_tokens(name))
            or (kind == "window" and grid is not None and maps.keys_index(name) is not None)
            or (kind == "spatial" and attn.ndim == 4 and attn.shape[1] == 1)
        ):
            names.append(name)
    return names


def has_spatial_attention(model: nn.Module, images: Tensor) -> bool:
    """Whether a forward pass of ``model`` (in eval mode, on the first of ``images``) records
    a map that becomes a heat map."""
    with evaluating(model), torch.no_grad(), record_attention(model) as maps:
        model(images[:1])
    return bool(spatial_map_names(maps))


@torch.no_grad()
def model_heatmap(
    model: nn.Module, images: Tensor, *, layer: str | None = None
) -> tuple[Tensor, Tensor, str]:
    """Run ``model`` on ``images`` while recording, and return ``(logits, heat, layer)``.

    Args:
        model: any model holding visattn attention modules.
        images: ``(B, C, H, W)`` normalised input.
        layer: name of the recorded map to use; the last spatial map of the forward pass
            (the one closest to the classifier) when ``None``.

    Returns:
        logits ``(B, classes)``, heat ``(B, H, W)`` in [0, 1], and the map used.
    """
    with record_attention(model) as maps:
        logits = model(images)
    names = spatial_map_names(maps)
    if not names:
        raise ValueError(
            "the model recorded no spatial attention map (is its attention 'none'?); "
            "a CAM method (gradcam, gradcam++, hirescam) explains any network"
        )
    if layer is None:
        layer = names[-1]
    elif layer not in names:
        raise ValueError(f"no spatial attention map named {layer!r}; recorded: {', '.join(names)}")
    return logits, maps_heatmap(maps, layer, tuple(images.shape[-2:])), layer


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
