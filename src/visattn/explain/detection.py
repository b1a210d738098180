"""Explaining a detector's boxes: Grad-CAM per box (Selvaraju et al. 2017, arXiv:1610.02391) by
pytorch-grad-cam's ``FasterRCNNBoxScoreTarget`` (IoU of the best-matching output box + its score),
the attention each box pays, and the pointing game per box (Zhang et al. 2016, arXiv:1608.00507).

``detector`` is a ``visattn.models.detection.Detector``, ``image`` one ``(C, H, W)`` in [0, 1],
``boxes`` ``(n, 4)`` ``(x0, y0, x1, y1)`` in pixels; maps are ``(n, H, W)`` in [0, 1] per box,
laid over the padded batch the transform makes (feature maps span it) and cropped to the image.

Example:
    >>> det = create_detector("fcos", num_classes=10, in_channels=1, attention="mhsa")
    >>> image, truth = load_detection_dataset("cluttered-mnist-detection").test[0]
    >>> explained = explain_detections(det, image, min_score=0.3, truth=truth)
    >>> save_box_explanations(Path("boxes.png"), image, explained, [str(d) for d in range(10)])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou

from .._io import atomic_write
from ..maps import AttentionMaps, record_attention
from .heatmap import pointing_hits, received_attention, spatial_map_names
from .request import evaluating, normalise

__all__ = ["box_attention", "box_gradcam", "box_pointing", "explain_detections", "save_box_explanations"]


def _cover(detector: nn.Module, image: Tensor) -> tuple[int, int]:
    """``(rows, cols)`` in image pixels that the detector's padded input batch spans."""
    with evaluating(detector), torch.no_grad():
        batch, _ = detector.net.transform([image])
    (h, w), (hp, wp) = batch.image_sizes[0], batch.tensors.shape[-2:]
    return round(hp * image.shape[-2] / h), round(wp * image.shape[-1] / w)


def _to_image(grid_heat: Tensor, cover: tuple[int, int], size: Sequence[int]) -> Tensor:
    """``(n, h, w)`` over the padded input -> ``(n, H, W)`` over the image, in [0, 1]."""
    heat = F.interpolate(grid_heat[:, None].float(), size=cover, mode="bilinear", align_corners=False)
    return normalise(heat[:, 0, : size[0], : size[1]])


def _box_target(target: Callable[[dict[str, Tensor]], Tensor], label: Tensor) -> Callable[..., Tensor]:
    """``target`` (a ``FasterRCNNBoxScoreTarget``) over the outputs of ``label``: over all, its argmax
    can pick the same box of another class (NMS is per class; half the boxes of a random FCOS did)
    and score 0. It returns a constant without a match; 0 x the scores keeps the backward working."""

    def score(output: dict[str, Tensor]) -> Tensor:
        same = output["labels"] == label
        value = target({key: output[key][same] for key in ("boxes", "labels", "scores")})
        return value + 0.0 * output["scores"].sum()

    return score


def box_gradcam(
    detector: nn.Module, image: Tensor, boxes: Tensor, labels: Tensor, *, layer: str | None = None
) -> Tensor:
    """One Grad-CAM map ``(n, H, W)`` per box: pytorch-grad-cam's ``GradCAM`` with
    ``FasterRCNNBoxScoreTarget([label], [box])`` over the outputs of the box's label (FCOS,
    RetinaNet and Faster R-CNN alike: ``Detector`` gives them one output format).

    A box the detector no longer finds (no output of its label overlaps it by IoU > 0.5) gets
    an all-zero map. Modes, ``requires_grad`` flags and gradients are left as they were.

    Args:
        labels: ``(n,)`` classes ``0..K-1``.
        layer: a module name (``detector.named_modules()``) with a 4-D output. Default: each
            pyramid level after the neck attention (``detector.body.neck_attn``, in every
            backbone), their maps averaged: no level's output feeds another level's head, so the
            finest alone would leave a box found on a coarser level an all-zero map.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    boxes, labels, x = boxes.reshape(-1, 4).float(), labels.reshape(-1), image.detach()[None]  # (1, C, H, W)
    heat = torch.zeros(len(boxes), *image.shape[-2:], device=image.device)
    targets = [_box_target(FasterRCNNBoxScoreTarget([k], [b]), k) for b, k in zip(boxes, labels, strict=True)]
    modules = list(detector.body.neck_attn) if layer is None else [detector.get_submodule(layer)]
    cover = _cover(detector, image)

    class CoverGradCAM(GradCAM):
        # pytorch-grad-cam resizes to the input's size; the feature map spans the padded batch.
        def get_target_width_height(self, input_tensor: Tensor) -> tuple[int, int]:
            return cover[1], cover[0]

    # Frozen, with a graph (pytorch-grad-cam fails without): the image carries it (a frozen detector
    # works too), no weight gradient is computed, pytorch-grad-cam's zero_grad drops none of ours.
    params = [(p, p.requires_grad, p.grad) for p in detector.parameters()]
    with evaluating(detector), torch.inference_mode(False), torch.enable_grad():
        try:
            detector.requires_grad_(False)
            # One CAM per layer: with several, pytorch-grad-cam pairs activations and gradients by
            # backward order, which the pyramid's heads do not keep (jacobgil/pytorch-grad-cam#57).
            for module in modules:
                cam = CoverGradCAM(model=detector, target_layers=[module])  # eval mode, undone by evaluating
                try:  # not ``with cam``: its __exit__ prints and swallows an IndexError
                    # One pass per box: batching moves boxes by float noise, where the IoU term jumps.
                    for i, target in enumerate(targets):
                        one = cam(input_tensor=x.clone().requires_grad_(True), targets=[target])
                        heat[i] += torch.from_numpy(one[0, : image.shape[-2], : image.shape[-1]]).to(heat)
                finally:
                    cam.activations_and_grads.release()
        finally:
            for p, flag, grad in params:
                p.requires_grad_(flag)
                p.grad = grad
    return normalise(heat)


def _cells_inside(boxes: Tensor, grid: tuple[int, int], cover: tuple[int, int]) -> Tensor:
    """``(n, h*w)`` bool: the cells whose centres fall in each box (none: the cell under its centre)."""
    h, w = grid
    cy = (torch.arange(h, device=boxes.device) + 0.5) * cover[0] / h
    cx = (torch.arange(w, device=boxes.device) + 0.5) * cover[1] / w
    rows = (cy >= boxes[:, 1:2]) & (cy < boxes[:, 3:4])  # (n, h)
    cols = (cx >= boxes[:, 0:1]) & (cx < boxes[:, 2:3])  # (n, w)
    inside = (rows[:, :, None] & cols[:, None, :]).flatten(1)  # (n, h*w)
    centre_y = ((boxes[:, 1] + boxes[:, 3]) / 2 * h / cover[0]).long().clamp(0, h - 1)
    centre_x = ((boxes[:, 0] + boxes[:, 2]) / 2 * w / cover[1]).long().clamp(0, w - 1)
    empty = ~inside.any(dim=1)
    inside[empty, centre_y[empty] * w + centre_x[empty]] = True
    return inside


def _looks(maps: AttentionMaps, boxes: Tensor, size: Sequence[int], cover: tuple[int, int]) -> Tensor | None:
    if not (names := spatial_map_names(maps)):
        return None
    name = names[-1]  # the last: nearest the heads
    attn, kind, grid = maps[name][:1].float(), maps.kind(name), maps.grid(name)  # (1, ...): one image
    prefix = maps.prefix_tokens(name)
    boxes = boxes.reshape(-1, 4).float().to(attn.device)
    if not len(boxes):
        return torch.zeros(0, *size, device=attn.device)
    if kind == "spatial":  # a gate has no queries: one map for every box
        return _to_image(attn[:, 0].expand(len(boxes), -1, -1), cover, size)
    assert grid is not None  # spatial_map_names keeps softmax and window maps with a grid only
    if kind == "window":  # queries on the grid, keys in window slots
        inside, keys = _cells_inside(boxes, grid, cover), maps.keys_index(name).to(attn.device)
        rows = [received_attention(attn[:, :, q], keys[q], grid[0] * grid[1]) for q in inside]
        return _to_image(torch.cat(rows).view(-1, *grid), cover, size)
    weights = attn[0, :, :, prefix:].mean(dim=0)  # (Nq, h*w): over heads
    # queries on the key grid, or on one s times finer (pooled keys: a subsampled non-local block)
    fine = [s for s in range(1, 9) if weights.shape[0] - prefix == s * s * grid[0] * grid[1]]
    if not fine:  # one pooled query (GC's context), or queries that are not positions
        heat = weights.mean(dim=0).view(1, *grid).expand(len(boxes), -1, -1)
    else:
        inside = _cells_inside(boxes, (grid[0] * fine[0], grid[1] * fine[0]), cover).float()  # (n, Nq')
        heat = (inside @ weights[prefix:]) / inside.sum(dim=1, keepdim=True)  # mean over the box's queries
    return _to_image(heat.reshape(-1, *grid), cover, size)


def box_attention(detector: nn.Module, image: Tensor, boxes: Tensor) -> Tensor | None:
    """Where each box looks, ``(n, H, W)``: the attention its positions pay in the last recorded
    spatial map (``None`` without one). A softmax map over positions ``(B, heads, N, N)`` is
    averaged over heads and the queries whose cell centres fall in the box (or the cell under its
    centre), a map over the keys; a window map likewise. A map with no queries on the grid (a
    spatial gate such as CBAM's, GC's pooled context weights) gives one map for every box."""
    with evaluating(detector), torch.no_grad(), record_attention(detector) as maps:
        detector([image])
    return _looks(maps, boxes, image.shape[-2:], _cover(detector, image))


def box_pointing(maps: Tensor, boxes: Tensor) -> Tensor:
    """The pointing game per box, bool ``(n,)``: is the peak of ``maps`` ``(n, H, W)`` on a pixel
    its box touches (``floor(x0)`` to ``ceil(x1)``, exclusive)? A flat map (an all-zero
    Grad-CAM) points nowhere and misses."""
    boxes = boxes.reshape(-1, 4).to(maps.device)
    pixels = torch.cat([boxes[:, :2].floor(), boxes[:, 2:].ceil()], dim=1).long()
    flat = maps.flatten(1).amax(dim=1) <= maps.flatten(1).amin(dim=1)
    return pointing_hits(maps, pixels) & ~flat


def explain_detections(
    detector: nn.Module, image: Tensor, *, min_score: float = 0.5, truth: dict[str, Tensor] | None = None
) -> list[dict[str, Any]]:
    """Detect, then explain every box scoring at least ``min_score``.

    Args:
        truth: the image's ``{"boxes", "labels"}``; each box is matched to the ground-truth box
            of its label it overlaps most, when by IoU >= 0.5 (boxes may share one).

    Returns:
        Per box ``{"box" (4,), "label" int, "score" float, "gradcam" (H, W), "attention"
        (H, W) or None}``; with ``truth`` also ``"truth"`` (the matched box or None) and
        ``"pointing_gradcam"``, ``"pointing_attention"`` (hits against it, None without one).
    """
    with evaluating(detector), torch.no_grad(), record_attention(detector) as maps:
        found = detector([image])[0]
    keep = found["scores"] >= min_score
    boxes, labels, scores = found["boxes"][keep], found["labels"][keep], found["scores"][keep]
    gradcam = box_gradcam(detector, image, boxes, labels)
    attention = _looks(maps, boxes, image.shape[-2:], _cover(detector, image))
    rows = zip(boxes, labels.tolist(), scores.tolist(), gradcam, strict=True)
    explained = [{"box": b, "label": k, "score": s, "gradcam": g} for b, k, s, g in rows]
    if truth is not None:
        t_boxes, t_labels = truth["boxes"].reshape(-1, 4).to(boxes), truth["labels"].to(labels.device)
        iou = box_iou(boxes, t_boxes).where(labels[:, None] == t_labels[None], -1.0)  # (n, m)
    for i, item in enumerate(explained):
        item["attention"] = None if attention is None else attention[i]
        if truth is None:
            continue
        j = int(iou[i].argmax()) if iou.shape[1] else -1
        item["truth"] = matched = t_boxes[j] if j >= 0 and iou[i, j] >= 0.5 else None
        for key in ("gradcam", "attention"):
            heat = item[key]
            hit = None if matched is None or heat is None else box_pointing(heat[None], matched[None])[0]
            item[f"pointing_{key}"] = None if hit is None else bool(hit)
    return explained


def save_box_explanations(path: Path, image: Tensor, explained: list[dict], classes: Sequence[str]) -> None:
    """Write a PNG to ``path``, one row per box of ``explained`` (``explain_detections``'s
    output): the image with the box and its class name from ``classes``, the Grad-CAM overlay,
    and the attention overlay when there is one; detections lime, matched truth dashed white."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    pic = image.detach().cpu().clamp(0, 1)
    pic, cmap = (pic.permute(1, 2, 0).numpy(), None) if pic.shape[0] == 3 else (pic[0].numpy(), "gray")
    columns, rows = 3 if any(e["attention"] is not None for e in explained) else 2, max(1, len(explained))
    fig, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.imshow(pic, cmap=cmap, vmin=0, vmax=1)
        ax.set_axis_off()
    for row, item in zip(axes, explained, strict=False):
        named = f"{classes[item['label']]} {item['score']:.2f}"
        panels = [(None, named), (item["gradcam"], "Grad-CAM"), (item["attention"], "attention")]
        for ax, (heat, title) in zip(row, panels, strict=False):
            if heat is not None:
                ax.imshow(heat.detach().cpu().numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ax.set_title(title if heat is not None or title == named else "no attention", fontsize=9)
            for box, colour, style in ((item["box"], "lime", "-"), (item.get("truth"), "white", "--")):
                if box is not None:  # imshow puts pixel centres on integers, box edges half a pixel off
                    x0, y0, x1, y1 = box.tolist()
                    frame = Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec=colour, ls=style)
                    ax.add_patch(frame)
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)
