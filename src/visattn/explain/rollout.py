"""Attention rollout and gradient-weighted attention over a transformer's global maps.

- ``rollout``: Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers"
  (arXiv:2005.00928). Every layer's heads are fused (mean, max or min), the residual path is
  added as the identity, ``A = 0.5 W + 0.5 I`` with rows renormalised, and the layers are
  multiplied, ``A_L ... A_1``. The optional discard ratio (the weakest fused weights of each
  layer set to 0 before the identity is added) follows the widely used vit-explain variant;
  unlike it, no entry is exempt.
- ``grad-attention``: Chefer, Gur & Wolf 2021, "Generic Attention-model Explainability"
  (arXiv:2103.15679), its self-attention rule: ``R = I``, then for every layer
  ``R += mean_heads((dy/dA * A)^+) R``, with ``y`` the target logit.

With a class token the map is its row of the product over the patch keys; without one
(mean-pooled transformers, CNNs with a global attention block) it is the relevance each
position receives, averaged over the queries. Windowed and hierarchical transformers (Swin)
go through ``window_flow``: window maps composed through their shifts and patch merging.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..maps import AttentionMaps, record_attention
from ..registry import EXPLAINERS
from .request import HEAD_FUSIONS, Request, evaluating, takes, upsample
from .window_flow import window_flow

_FUSE: dict[str, Callable[[Tensor], Tensor]] = {
    "mean": lambda attn: attn.mean(dim=1),
    "max": lambda attn: attn.amax(dim=1),
    "min": lambda attn: attn.amin(dim=1),
}


def fuse_heads(attn: Tensor, how: str) -> Tensor:
    """``(B, heads, N, N)`` -> ``(B, N, N)`` by ``how`` in mean, max, min."""
    if how not in _FUSE:
        raise ValueError(f"head_fusion must be one of {', '.join(HEAD_FUSIONS)}, got {how!r}")
    return _FUSE[how](attn)


def discard_weakest(fused: Tensor, ratio: float) -> Tensor:
    """Zero the ``ratio`` fraction of smallest entries of each ``(N, N)`` matrix of ``fused``."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {ratio}")
    flat = fused.flatten(1)  # (B, N*N)
    drop = int(flat.shape[1] * ratio)
    if drop == 0:
        return fused
    weakest = flat.topk(drop, dim=1, largest=False).indices
    return flat.scatter(1, weakest, 0.0).view_as(fused)


def rollout_matrix(layers: list[Tensor], *, head_fusion: str = "mean", discard_ratio: float = 0.0) -> Tensor:
    """Attention rollout of ``(B, heads, N, N)`` maps in forward order -> ``(B, N, N)``."""
    joint = None
    for attn in layers:
        fused = discard_weakest(fuse_heads(attn.double(), head_fusion), discard_ratio)
        step = fused + torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
        step = step / step.sum(dim=-1, keepdim=True)  # 0.5 W + 0.5 I for rows that sum to 1
        joint = step if joint is None else step @ joint
    if joint is None:
        raise ValueError("rollout needs at least one attention map")
    return joint


def chefer_relevance(fused: list[Tensor]) -> Tensor:
    """``R = I; R += A_l R`` over head-merged, gradient-weighted ``(B, N, N)`` layers."""
    if not fused:
        raise ValueError("grad-attention needs at least one attention map")
    relevance = torch.eye(fused[0].shape[-1], dtype=fused[0].dtype, device=fused[0].device).expand_as(
        fused[0]
    )
    for weighted in fused:
        relevance = relevance + weighted @ relevance
    return relevance


def token_heat(joint: Tensor, prefix: int, grid: tuple[int, int]) -> Tensor:
    """``(B, N, N)`` token-to-token matrix -> ``(B, h, w)`` over the patch grid."""
    per_key = joint[:, 0, prefix:] if prefix > 0 else joint.mean(dim=1)  # (B, h*w)
    return per_key.reshape(-1, *grid)


def window_maps(maps: AttentionMaps) -> list[str]:
    """Names of the recorded window maps that carry a grid and a key index, in forward order."""
    return [
        n
        for n in maps
        if maps.kind(n) == "window" and maps.grid(n) is not None and maps.keys_index(n) is not None
    ]


def global_maps(maps: AttentionMaps) -> tuple[list[str], tuple[int, int], int]:
    """Names of the global self-attention maps a rollout runs through, with their patch grid
    and prefix count; ``([], (0, 0), 0)`` when the model recorded none.

    Raises ``ValueError`` for maps over different token sets (rollout multiplies them).
    """
    names, shapes = [], set()
    for name, attn in maps.items():
        grid, prefix = maps.grid(name), maps.prefix_tokens(name)
        if (
            maps.kind(name) == "softmax"
            and grid is not None
            and attn.shape[-1] == attn.shape[-2] == prefix + grid[0] * grid[1]
        ):
            names.append(name)
            shapes.add((grid, prefix))
    if len(shapes) > 1:
        raise ValueError(f"rollout needs every attention map over the same tokens, got {sorted(shapes)}")
    ((grid, prefix),) = shapes or {((0, 0), 0)}
    return names, grid, prefix


def _no_maps(maps: AttentionMaps) -> ValueError:
    kinds = sorted({maps.kind(n) for n in maps})
    found = f"it recorded only {', '.join(kinds)} maps" if kinds else "it recorded no attention"
    return ValueError(
        f"rollout and grad-attention need self-attention over positions (global or windowed); {found}. "
        "A CAM method (gradcam, gradcam++, hirescam) explains any network"
    )


def _flow(
    maps: AttentionMaps,
    layers: dict[str, Tensor],
    size: tuple[int, int],
    *,
    global_step: Callable[[list[Tensor]], Tensor],
    normalise_rows: bool,
) -> Tensor:
    """``layers`` (name -> per-layer weights, heads fused for window maps) -> ``(B, H, W)``."""
    names, grid, prefix = global_maps(maps)
    if names:
        return upsample(token_heat(global_step([layers[n] for n in names]), prefix, grid), size)
    windows = window_maps(maps)
    if not windows:
        raise _no_maps(maps)
    chain = [(layers[n], maps.keys_index(n), maps.grid(n)) for n in windows]
    flow, grid = window_flow(chain, normalise_rows=normalise_rows)
    return upsample(flow.view(-1, *grid), size)


@EXPLAINERS.register("rollout")
@takes("head_fusion", "discard_ratio")
def rollout(request: Request) -> Tensor:
    """Attention rollout (class-agnostic): ``(B, H, W)``."""
    with evaluating(request.model), torch.no_grad(), record_attention(request.model) as maps:
        logits = request.model(request.images)
    request.classes(logits)  # the map does not depend on it, but a bad target is still refused
    fusion, ratio = request.head_fusion, request.discard_ratio
    fused = {n: discard_weakest(fuse_heads(maps[n].double(), fusion), ratio) for n in window_maps(maps)}
    layers = {n: maps[n] for n in maps} | fused

    def product(attn: list[Tensor]) -> Tensor:
        return rollout_matrix(attn, head_fusion=fusion, discard_ratio=ratio)

    return _flow(maps, layers, request.size, global_step=product, normalise_rows=True)


@EXPLAINERS.register("grad-attention")
@takes()
def grad_attention(request: Request) -> Tensor:
    """Gradient-weighted attention relevance for the target class: ``(B, H, W)``."""
    # An input that requires grad keeps the graph even when every parameter is frozen.
    images = request.images.detach().requires_grad_(True)
    with evaluating(request.model), torch.enable_grad(), record_attention(request.model, grad=True) as maps:
        logits = request.model(images)
    names = global_maps(maps)[0] or window_maps(maps)
    if not names:
        raise _no_maps(maps)
    detached = [n for n in names if not maps[n].requires_grad]
    if detached:
        raise ValueError(
            f"grad-attention needs attention weights in the autograd graph; {', '.join(detached)} "
            "recorded detached maps"
        )
    score = logits.gather(1, request.classes(logits.detach())[:, None]).sum()
    grads = torch.autograd.grad(score, [maps[n] for n in names], allow_unused=True)
    off_path = [n for n, g in zip(names, grads, strict=True) if g is None]
    if off_path:
        # A recorded copy that the output was not computed from has no gradient to read.
        raise ValueError(
            f"grad-attention: the maps of {', '.join(off_path)} are not on the path to the output, "
            "so their gradient is undefined"
        )
    weighted = {n: g.double() * maps[n].detach().double() for n, g in zip(names, grads, strict=True)}
    # Window layers enter the chain with their heads merged; global ones keep (weight, gradient).
    layers = {n: w.clamp_min(0).mean(dim=1) for n, w in weighted.items()}
    return _flow(maps, layers, request.size, global_step=chefer_relevance, normalise_rows=False)
