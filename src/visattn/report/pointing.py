"""Pointing-game hits and misses drawn for the report, computed from the run's checkpoint.

A run folder records the pointing game as one number; which images hit and which miss is not
written down, so the report works it out: it loads the run's checkpoint (``best``, else
``last``) and the first test images, takes each attention heat map's peak, and calls it a hit
when the peak lies inside the object's box (``visattn.explain.pointing_hits``, the rule the
evaluation scores). The images are spread over the split; each is drawn with its map, box
and peak, and up to a third of the grid are misses, so both kinds are shown when there are some.

Cluttered MNIST's test canvases are rebuilt alone (0.1 s) instead of through ``load_dataset``,
which draws the 8,000 training canvases first (1 s); ``tests/report`` checks both give the
same images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .images import data_uri, png_bytes
from .markup import Absent

SCORED = 64  # test images scored at most
SHOWN = 12  # images drawn
BATCH = 16
BUDGET_S = 0.4  # stop scoring more batches after this long (one batch is always scored)
SIDE = 120  # drawn side in pixels, about

# a blue-cyan-yellow-red ramp like the figures' "jet" (value, r, g, b)
_RAMP = np.array([[0.0, 0, 0, 128], [0.125, 0, 0, 255], [0.375, 0, 255, 255], [0.625, 255, 255, 0],
                  [0.875, 255, 0, 0], [1.0, 128, 0, 0]])  # fmt: skip


@dataclass
class Example:
    index: int
    label: int
    predicted: int
    hit: bool
    uri: str


@dataclass
class PointingGrid:
    examples: list[Example]
    hits: int
    scored: int
    layer: str
    checkpoint: str
    classes: list[str]
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def pointing_grid(run_dir: Path, config: dict[str, Any] | None = None, test: Any = None) -> PointingGrid:
    """Score test images of the run's data and draw a grid of hits and misses.

    Args:
        config: the run's ``config.yaml`` (where its data lives).
        test: the run's test split when the caller holds it (the training loop); else it is
            built from the checkpoint's data set.

    Raises ``Absent`` with the reason when the run has no checkpoint, its data is not at hand,
    the data has no object boxes or the model records no spatial attention.
    """
    import torch

    from ..explain import model_heatmap, pointing_hits
    from ..train.checkpoint import CheckpointError, load_model

    started = time.perf_counter()
    if not any((run_dir / f"{stem}.safetensors").is_file() for stem in ("best", "last")):
        raise Absent("not recorded for this run (no best.safetensors or last.safetensors to draw from)")
    try:
        model, meta = load_model(run_dir, device="cpu")
    except CheckpointError as err:
        raise Absent(f"the checkpoint does not load: {err}") from None
    test = _test_split(meta, config or {}) if test is None else test
    if getattr(test, "boxes", None) is None:
        raise Absent(f"the test images of {meta.get('dataset')} have no object boxes: no pointing game")
    hits, logits, heats = [], [], []
    # spread over the split (test sets often come sorted by class), in batches until the budget
    order = list(range(0, len(test), max(1, len(test) // SCORED)))[:SCORED]
    with torch.no_grad():
        for lo in range(0, len(order), BATCH):
            idx = order[lo : lo + BATCH]
            x, _ = test.__getitems__(idx)
            try:
                out, heat, layer = model_heatmap(model, x)
            except ValueError as err:  # no spatial attention map
                raise Absent(str(err)) from None
            hits.append(pointing_hits(heat, test.boxes[idx]))
            logits.append(out.float())
            heats.append(heat.float())
            if time.perf_counter() - started > BUDGET_S:
                break
    hit, heat = torch.cat(hits), torch.cat(heats)
    predicted = torch.cat(logits).argmax(dim=1)
    chosen = _choose(hit.tolist())  # positions in ``order``
    x, y = test.__getitems__([order[i] for i in chosen])
    mean, std = (torch.tensor(s, dtype=torch.float32).view(1, -1, 1, 1) for s in test.stats)
    pictures = ((x * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    examples = [
        Example(order[i], int(y[k]), int(predicted[i]), bool(hit[i]),
                data_uri(png_bytes(_draw(pictures[k], heat[i].numpy(), test.boxes[order[i]].tolist())),
                         "image/png"))
        for k, i in enumerate(chosen)
    ]  # fmt: skip
    name = "best.safetensors" if (run_dir / "best.safetensors").is_file() else "last.safetensors"
    return PointingGrid(examples, int(hit.sum()), len(hit), layer, name, list(meta.get("classes", [])),
                        time.perf_counter() - started)  # fmt: skip


def _choose(hits: list[bool]) -> list[int]:
    """Positions to draw: hits, then misses (a third of the grid, more when there are too few
    hits), each spread evenly over the images scored."""
    misses = [i for i, h in enumerate(hits) if not h]
    good = [i for i, h in enumerate(hits) if h]
    take = min(len(misses), max(SHOWN // 3, SHOWN - len(good)))
    return _spread(good, SHOWN - take) + _spread(misses, take)


def _spread(items: list[int], n: int) -> list[int]:
    """``n`` of ``items``, evenly spaced, in order."""
    if len(items) <= n:
        return items
    return [items[i * len(items) // n] for i in range(n)]


def _test_split(meta: dict[str, Any], config: dict[str, Any]) -> Any:
    """The test split the run was scored on."""
    from ..data import DataUnavailableError, load_dataset

    name = meta.get("dataset") or config.get("dataset")
    if name is None:
        raise Absent("the checkpoint names no data set to draw test images from")
    if name == "cluttered-mnist":  # its test canvases alone, without the training set's
        from ..data import cluttered_test_split
        from ..data.mnist_sample import load_mnist_sample

        folder = config.get("data_dir")
        images, labels = load_mnist_sample(None if folder is None else Path(folder))
        return cluttered_test_split(images, labels, stats=(tuple(meta["mean"]), tuple(meta["std"])))
    options = {k: config[k] for k in ("data_dir", "val_fraction", "max_bad_fraction", "seed") if k in config}
    if config.get("img_size") is not None:
        options["image_size"] = config["img_size"]
    try:
        return load_dataset(name, **options).test
    except (DataUnavailableError, FileNotFoundError, KeyError, ValueError) as err:
        raise Absent(f"the test images of {name} are not at hand: {err}") from None


def _colour(heat: np.ndarray) -> np.ndarray:
    """``(H, W)`` in [0, 1] -> ``(H, W, 3)`` float colours of the ramp."""
    v = np.clip(heat, 0, 1)
    return np.stack([np.interp(v, _RAMP[:, 0], _RAMP[:, c]) for c in (1, 2, 3)], axis=-1)


def _draw(picture: np.ndarray, heat: np.ndarray, box: list[float]) -> Image.Image:
    """One image (``(H, W, C)`` uint8) with its heat map at half opacity, the box and the peak."""
    rgb = np.repeat(picture, 3, axis=-1) if picture.shape[-1] == 1 else picture[..., :3]
    blend = (0.5 * rgb.astype(np.float32) + 0.5 * _colour(heat)).round().astype(np.uint8)
    h, w = heat.shape
    scale = SIDE / max(h, w)
    image = Image.fromarray(blend)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = image.resize(size, Image.NEAREST if scale >= 1 else Image.LANCZOS)
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = (v * scale for v in box)
    draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(0, 255, 0), width=2)
    py, px = np.unravel_index(int(np.argmax(heat)), heat.shape)
    cx, cy, arm = (px + 0.5) * scale, (py + 0.5) * scale, 6
    for colour, width in (((0, 0, 0), 4), ((255, 255, 255), 2)):
        draw.line([cx - arm, cy, cx + arm, cy], fill=colour, width=width)
        draw.line([cx, cy - arm, cx, cy + arm], fill=colour, width=width)
    return image
