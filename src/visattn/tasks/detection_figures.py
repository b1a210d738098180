"""The figure a detection run writes: test images with their true boxes and the detections."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from .._io import atomic_write

MIN_SCORE = 0.3  # boxes drawn; the evaluation counts every box


def save_detections(
    path: Path,
    images: Sequence[Tensor],
    targets: Sequence[dict[str, Tensor]],
    predictions: Sequence[dict[str, Tensor]],
    classes: Sequence[str],
    *,
    min_score: float = MIN_SCORE,
    title: str | None = None,
) -> None:
    """One panel per image: the true boxes dashed in green, the detections scoring at least
    ``min_score`` in red with class and score."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    cols = min(4, len(images))
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, truth, found in zip(axes.flat, images, targets, predictions, strict=False):
        pixels = image.permute(1, 2, 0).cpu().numpy()
        ax.imshow(pixels[..., 0] if pixels.shape[2] == 1 else pixels, cmap="gray", vmin=0, vmax=1)
        for x0, y0, x1, y1 in truth["boxes"].tolist():
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="lime", ls="--", lw=1))
        keep = found["scores"] >= min_score
        for (x0, y0, x1, y1), label, score in zip(
            found["boxes"][keep].tolist(),
            found["labels"][keep].tolist(),
            found["scores"][keep].tolist(),
            strict=True,
        ):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="red", lw=1.2))
            ax.text(x0, y0 - 1, f"{classes[label]} {score:.2f}", color="red", fontsize=7, va="bottom")
    fig.suptitle(title or f"green dashed: true boxes; red: detections scoring >= {min_score:g}", fontsize=9)
    fig.tight_layout()
    try:
        atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
