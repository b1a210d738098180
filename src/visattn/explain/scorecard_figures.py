"""The scorecard's two figures: the mean deletion and insertion curves of every method, and a
grid of each method's maps on the first images (with the object box and the map's peak)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .scorecard import Scorecard


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_curves(card: Scorecard, path: Path) -> None:
    """Two panels, deletion and insertion: the target's mean softmax probability against the
    fraction of pixels changed, one line per method (baselines dashed), AUC in the legend."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    baselines = set(card.protocol["baselines"])
    for s in card.scores:
        style = "--" if s.method in baselines else "-"
        for ax, curve, area in (
            (axes[0], s.deletion_curve, s.deletion_auc),
            (axes[1], s.insertion_curve, s.insertion_auc),
        ):
            xs = np.linspace(0, 1, curve.numel())
            ax.plot(xs, curve.numpy(), style, label=f"{s.method} ({float(area.mean()):.3f})")
    for ax, title in zip(axes, ("deletion (lower is better)", "insertion (higher is better)"), strict=True):
        ax.set_xlabel("fraction of pixels changed")
        ax.set_ylabel("target probability")
        ax.set_ylim(0, 1)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    p = card.protocol
    fig.suptitle(f"{p['images']} images, {p['replacement']}, {p['steps']} steps", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80, format="png")
    plt.close(fig)


def save_maps(card: Scorecard, path: Path, *, stats: tuple[tuple[float, ...], tuple[float, ...]]) -> None:
    """``save_method_maps`` of the scorecard's first images and every method's maps of them."""
    maps = {s.method: s.examples for s in card.scores}
    save_method_maps(path, card.images, maps, boxes=card.boxes, stats=stats)


def save_method_maps(
    path: Path,
    images: Tensor,
    maps: dict[str, Tensor],
    *,
    boxes: Tensor | None = None,
    stats: tuple[tuple[float, ...], tuple[float, ...]],
    by_method: bool = False,
    title: str = "maps of each method (+ peak; box: the object)",
) -> None:
    """Every method's map over each image, its peak marked and the object box drawn where
    there is one. Writes a PNG to ``path``.

    Args:
        images: ``(k, C, H, W)`` normalised input.
        maps: method name -> ``(k, H, W)`` maps in [0, 1].
        boxes: optional ``(k, 4)`` object boxes ``(x0, y0, x1, y1)``.
        stats: the data set's ``(mean, std)`` per channel, to undo the normalisation.
        by_method: one row per method and a column per image (a strip for one method), instead
            of one row per image with the input first and a column per method.
        title: the figure's title.
    """
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in stats)
    pics = (
        (images.detach().cpu().float() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    )  # (k, H, W, C)
    k, gray = pics.shape[0], pics.shape[-1] == 1
    heats = {name: heat.detach().cpu().float().numpy() for name, heat in maps.items()}
    if by_method:  # (row title, image index, map or None) for each panel
        grid = [[(name, i, heats[name][i]) for i in range(k)] for name in heats]
    else:
        grid = [[("input", i, None)] + [(name, i, heats[name][i]) for name in heats] for i in range(k)]
    rows, cols = len(grid), len(grid[0])
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows + 0.3), squeeze=False)
    for r, row in enumerate(grid):
        for c, (name, i, heat) in enumerate(row):
            ax = axes[r][c]
            ax.imshow(pics[i, ..., 0] if gray else pics[i], cmap="gray" if gray else None, vmin=0, vmax=1)
            if heat is not None:
                ax.imshow(heat, cmap="jet", alpha=0.5, vmin=0, vmax=1)
                py, px = np.unravel_index(np.argmax(heat), heat.shape)
                ax.plot(px, py, marker="+", color="white", markersize=8, mew=1.5)
            if boxes is not None:
                x0, y0, x1, y1 = (float(v) for v in boxes[i])
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="lime", lw=1))
            ax.set_xticks([])
            ax.set_yticks([])
            if by_method and c == 0:
                ax.set_ylabel(name, fontsize=8)
            elif not by_method and r == 0:
                ax.set_title(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80, format="png")
    plt.close(fig)
