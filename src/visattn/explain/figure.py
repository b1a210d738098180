"""A PNG grid of where a model looks: one row per image with the input, the attention heat
map over it, and the model's top predictions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .._checks import check_choice
from .._io import atomic_write
from .heatmap import model_heatmap


def save_attention_grid(
    path: Path,
    images: Tensor,
    heat: Tensor,
    probs: Tensor,
    classes: Sequence[str],
    *,
    labels: Tensor | None = None,
    boxes: Tensor | None = None,
    top: int = 3,
    title: str | None = None,
) -> None:
    """Write the grid to ``path`` (PNG).

    Args:
        images: ``(B, C, H, W)`` in [0, 1] (undo the normalisation first).
        heat: ``(B, H, W)`` in [0, 1].
        probs: ``(B, classes)`` class probabilities.
        classes: class names.
        labels: optional true classes ``(B,)``, shown beside the prediction; a negative label
            marks an image without one (a user's own file), shown with its prediction only.
        boxes: optional object boxes ``(B, 4)`` ``(x0, y0, x1, y1)``, drawn on both panels.
        top: how many classes to list per image.
        title: optional figure title.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = images.shape[0]
    pics = images.detach().cpu().clamp(0, 1).permute(0, 2, 3, 1).numpy()  # (B, H, W, C)
    heat_np = heat.detach().cpu().numpy()
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.3 * n + (0.4 if title else 0)), squeeze=False)
    for i in range(n):
        pic = pics[i, ..., 0] if pics.shape[-1] == 1 else pics[i]
        cmap = "gray" if pics.shape[-1] == 1 else None
        ax_in, ax_heat, ax_bar = axes[i]
        ax_in.imshow(pic, cmap=cmap, vmin=0, vmax=1)
        ax_heat.imshow(pic, cmap=cmap, vmin=0, vmax=1)
        ax_heat.imshow(heat_np[i], cmap="jet", alpha=0.5, vmin=0, vmax=1)
        py, px = np.unravel_index(np.argmax(heat_np[i]), heat_np[i].shape)
        ax_heat.plot(px, py, marker="+", color="white", markersize=12, mew=2)
        if boxes is not None:
            x0, y0, x1, y1 = (float(v) for v in boxes[i])
            for ax in (ax_in, ax_heat):
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="lime", lw=1.2))
        for ax in (ax_in, ax_heat):
            ax.set_xticks([])
            ax.set_yticks([])
        ax_in.set_title("input" if i == 0 else "", fontsize=9)
        ax_heat.set_title("attention (+ peak)" if i == 0 else "", fontsize=9)
        p, idx = probs[i].detach().cpu().topk(min(top, probs.shape[1]))
        names = [classes[j] for j in idx.tolist()]
        truth = None if labels is None or int(labels[i]) < 0 else int(labels[i])
        colors = ["tab:green" if truth == j else "tab:gray" for j in idx.tolist()]
        ax_bar.barh(range(len(names))[::-1], p.numpy(), color=colors)
        ax_bar.set_yticks(range(len(names))[::-1], names)
        ax_bar.set_xlim(0, 1)
        ax_bar.tick_params(labelsize=8)
        verdict = "" if truth is None else f" (true {classes[truth]})"
        ax_bar.set_title(f"predicted {names[0]}{verdict}", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)


CHOICES = ("varied", "in-order")
POOL = 256  # test images whose predictions a varied choice looks at


def pick_examples(labels: Tensor, predicted: Tensor, count: int) -> list[int]:
    """Indices of ``count`` images that show a model at work: about a quarter of them (at
    least one, when there is one) misclassified, spread over their true classes; the rest
    spread so that every class appears before any class appears twice, correct images first
    within a class. Rows come grouped by true class. Without labels (all negative) the first
    ``count`` are taken.

    Args:
        labels: ``(N,)`` true classes, negative where unknown.
        predicted: ``(N,)`` predicted classes.
        count: how many to pick (at most ``N``).

    Example:
        >>> pick_examples(torch.tensor([0, 0, 0, 1, 1, 2]), torch.tensor([0, 0, 1, 1, 1, 2]), 4)
        [0, 2, 3, 5]
    """
    truth, guess = labels.tolist(), predicted.tolist()
    if all(t < 0 for t in truth):
        return list(range(min(count, len(truth))))
    wrong = [i for i, (t, g) in enumerate(zip(truth, guess, strict=True)) if t >= 0 and t != g]
    right = sorted(set(range(len(truth))) - set(wrong))
    shown: dict[int, int] = {}
    chosen = _spread(wrong, truth, min(len(wrong), max(1, count // 4)), shown)
    # the rest: correct images first within each class, mistakes where a class has no other
    chosen += _spread(right + [i for i in wrong if i not in chosen], truth, count - len(chosen), shown)
    return sorted(chosen, key=lambda i: (truth[i], i))


def _spread(pool: list[int], truth: list[int], k: int, shown: dict[int, int]) -> list[int]:
    """Take ``k`` of ``pool``, always from the class shown least so far (``shown`` counts)."""
    queues: dict[int, list[int]] = {}
    for i in pool:
        queues.setdefault(truth[i], []).append(i)
    taken = []
    while len(taken) < k and any(queues.values()):
        cls = min((c for c, q in queues.items() if q), key=lambda c: (shown.get(c, 0), c))
        taken.append(queues[cls].pop(0))
        shown[cls] = shown.get(cls, 0) + 1
    return taken


@torch.no_grad()
def _predict(model: nn.Module, dataset: Dataset, idx: list[int], device: torch.device | str) -> Tensor:
    """Predicted classes ``(len(idx),)`` of images ``idx``, 64 at a time."""
    out = []
    for lo in range(0, len(idx), 64):
        x, _ = dataset.__getitems__(idx[lo : lo + 64])
        out.append(model(x.to(device)).argmax(dim=1).cpu())
    return torch.cat(out)


def save_model_attention(
    model: nn.Module,
    dataset: Dataset,
    classes: Sequence[str],
    path: Path,
    *,
    device: torch.device | str = "cpu",
    count: int = 8,
    start: int = 0,
    layer: str | None = None,
    choose: str = "varied",
) -> str:
    """Draw the attention grid of ``model`` on ``count`` images of ``dataset`` and write it to
    ``path``. Returns the name of the attention layer shown.

    Args:
        choose: ``"varied"`` picks among the ``POOL`` images from ``start`` a mix of classes
            and mistakes (``pick_examples``); ``"in-order"`` takes ``count`` images from
            ``start`` as they come (a user's own files).
    """
    check_choice("choose", choose, CHOICES)
    stop = min(start + (max(count, POOL) if choose == "varied" else count), len(dataset))
    idx = list(range(start, stop))
    if not idx:
        raise ValueError(f"no images to draw: the data set has {len(dataset)}, start is {start}")
    was_training = model.training
    model.eval()
    if choose == "varied":
        labels = dataset.labels[idx]
        idx = [idx[i] for i in pick_examples(labels, _predict(model, dataset, idx, device), count)]
    x, y = dataset.__getitems__(idx)
    logits, heat, layer = model_heatmap(model, x.to(device), layer=layer)
    model.train(was_training)
    mean, std = (torch.tensor(s, dtype=torch.float32).view(1, -1, 1, 1) for s in dataset.stats)
    save_attention_grid(
        path,
        (x * std + mean).clamp(0, 1),
        heat,
        logits.float().softmax(dim=1),
        classes,
        labels=y,
        boxes=None if dataset.boxes is None else dataset.boxes[idx],
        title=f"attention of {layer}",
    )
    return layer


def save_confusion_matrix(path: Path, confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> None:
    """Write a confusion-matrix PNG: rows are true classes, columns predictions, each row
    normalised to sum to 1 (counts printed when the matrix is small)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    counts = np.asarray(confusion, dtype=np.int64)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    side = min(12.0, 2.0 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if n <= 20:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=8)
        ax.set_yticks(range(n), classes, fontsize=8)
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f"confusion matrix ({counts.sum()} images, accuracy {accuracy:.1%})", fontsize=10)
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)
