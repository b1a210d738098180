"""Cluttered MNIST detection: one to four digits of 16-32 px at random places on a black
canvas among fragments of other digits, each digit with its class and the tight box of its ink.

A digit is cut to its ink, scaled so that its longer side is a drawn size (the aspect ratio
kept), and cut to its ink again, so its box is exact: ``image[y0:y1, x0:x1]`` holds every
pixel of the digit and each edge row and column of the box holds some of them. Digits of one
canvas overlap by at most ``max_iou``; a digit that finds no such place in ``attempts`` draws
is left out (rare at the defaults). Clutter pieces are cut from the ink of random digits at
their own scale and kept a pixel clear of every digit box, so the ink inside a box is digits'
only; a piece without such a place is left out.

Canvas ``i`` is a pure function of ``(seed, i)``, as in ``cluttered.py``: the same seed gives
the same bytes, whatever the count. The embedded set (``cluttered_mnist_detection``) makes its
training canvases from the training digits of the MNIST sample and its test canvases from the
test digits, clutter included, so no digit image is on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from .._checks import check_float, check_int
from .datasets import DataBundle
from .mnist_sample import load_mnist_sample, split_indices

DIGITS = [str(d) for d in range(10)]
DETECTION_STREAM = 2  # first entropy word: apart from the classification canvases' 0 and 1
TRAIN_SPLIT, TEST_SPLIT = 0, 1


@dataclass(frozen=True)
class DetectionCanvases:
    """Canvases with their objects stored flat: the objects of canvas ``i`` are rows
    ``offsets[i]:offsets[i + 1]`` of ``boxes``, ``labels`` and ``source``.

    Attributes:
        images: uint8 ``(N, canvas, canvas)``.
        boxes: int64 ``(T, 4)``, ``(x0, y0, x1, y1)`` with exclusive ends.
        labels: int64 ``(T,)``, the digit classes.
        source: int64 ``(T,)``, the index of each placed digit in the source array.
        offsets: int64 ``(N + 1,)``.
        clutter_source: int64 ``(P,)``, the digit each clutter piece was cut from.
        clutter_offsets: int64 ``(N + 1,)``, the pieces of canvas ``i`` as for the objects.
    """

    images: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    source: np.ndarray
    offsets: np.ndarray
    clutter_source: np.ndarray
    clutter_offsets: np.ndarray


def ink_boxes(digits: np.ndarray) -> np.ndarray:
    """int64 ``(M, 4)``: the ``(x0, y0, x1, y1)`` of the ink of each of ``(M, h, w)`` arrays
    (exclusive ends; the whole array for one without ink)."""
    _, h, w = digits.shape
    rows, cols = digits.any(axis=2), digits.any(axis=1)  # (M, h), (M, w)
    empty = ~rows.any(axis=1)
    y0, y1 = rows.argmax(axis=1), h - rows[:, ::-1].argmax(axis=1)
    x0, x1 = cols.argmax(axis=1), w - cols[:, ::-1].argmax(axis=1)
    boxes = np.stack([x0, y0, x1, y1], axis=1).astype(np.int64)
    boxes[empty] = (0, 0, w, h)
    return boxes


def _scaled(ink: np.ndarray, side: int) -> np.ndarray:
    """``ink`` (cut to its ink) resized so its longer side is ``side``, cut to its ink again.
    PIL resamples 8-bit images in fixed point, so the result is the same on every machine."""
    h, w = ink.shape
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    patch = np.asarray(Image.fromarray(ink).resize(size, Image.Resampling.BILINEAR))
    rows, cols = np.flatnonzero(patch.any(axis=1)), np.flatnonzero(patch.any(axis=0))
    if not len(rows):  # a blank source keeps its scaled frame as its box
        return patch
    return patch[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _iou(cand: np.ndarray, placed: np.ndarray) -> np.ndarray:
    """IoU of candidate boxes ``(A, 4)`` with placed boxes ``(P, 4)``: ``(A, P)``."""
    a, p = cand[:, None], placed[None]
    ix = np.minimum(a[..., 2], p[..., 2]) - np.maximum(a[..., 0], p[..., 0])
    iy = np.minimum(a[..., 3], p[..., 3]) - np.maximum(a[..., 1], p[..., 1])
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    return inter / (_area(a) + _area(p) - inter)


def _pick(u: np.ndarray, n: np.ndarray | int) -> np.ndarray:
    """Uniforms in [0, 1) -> integers in ``[0, n)`` (``n`` broadcasts)."""
    return np.minimum((u * n).astype(np.int64), np.asarray(n) - 1)


def _outside(cand: np.ndarray, margin: np.ndarray) -> np.ndarray:
    """``(..., A)``: whether each candidate box of ``(..., A, 4)`` meets none of ``(P, 4)``."""
    c, g = cand[..., None, :], margin
    apart = (c[..., 2] <= g[:, 0]) | (c[..., 0] >= g[:, 2]) | (c[..., 3] <= g[:, 1]) | (c[..., 1] >= g[:, 3])
    return apart.all(axis=-1)


def make_detection_canvases(
    digits: np.ndarray, labels: np.ndarray, *, count: int, canvas: int = 64,
    digits_per_canvas: tuple[int, int] = (1, 4), sizes: tuple[int, int] = (16, 32), max_iou: float = 0.3,
    pieces: int = 4, piece_size: int = 8, attempts: int = 16, seed: int | tuple[int, ...] = 0,
) -> DetectionCanvases:  # fmt: skip
    """Make ``count`` detection canvases from ``digits``.

    Args:
        digits: uint8 ``(M, h, w)`` source digits (``M >= 2``); clutter is cut from them too.
        labels: ``(M,)`` their classes.
        count: number of canvases.
        canvas: side of the square canvas.
        digits_per_canvas: the fewest and most digits drawn for a canvas (inclusive).
        sizes: the smallest and largest longer side of a placed digit's ink, in pixels.
        max_iou: the largest IoU allowed between two digit boxes of one canvas.
        pieces: clutter fragments drawn per canvas.
        piece_size: side of each square fragment (at most the digit size).
        attempts: places tried for each digit and each fragment.
        seed: an int or a tuple of ints; canvas ``i`` depends on ``seed`` and ``i`` alone.
    """
    if digits.ndim != 3 or digits.dtype != np.uint8 or len(digits) != len(labels) or len(digits) < 2:
        raise ValueError(
            f"digits must be uint8 (M, h, w) with M >= 2 and M labels, got {digits.dtype} "
            f"{digits.shape} and {len(labels)} labels"
        )
    m, h, w = digits.shape
    check_int("count", count, minimum=0)
    check_int("canvas", canvas, minimum=max(h, w))
    lo, hi = (check_int("digits_per_canvas", n, minimum=1) for n in digits_per_canvas)
    small, large = (check_int("sizes", n, minimum=4) for n in sizes)
    if lo > hi or small > large or large > canvas:
        raise ValueError(
            f"digits_per_canvas and sizes must be (low, high) with low <= high and sizes at most the "
            f"canvas {canvas}, got {digits_per_canvas} and {sizes}"
        )
    check_float("max_iou", max_iou, low=0.0, high=1.0, high_open=False)
    check_int("pieces", pieces, minimum=0)
    check_int("piece_size", piece_size, minimum=1)
    check_int("attempts", attempts, minimum=1)
    if piece_size > min(h, w):
        raise ValueError(f"piece_size must be at most the digit size {min(h, w)}, got {piece_size}")
    ink = ink_boxes(digits)
    entropy = (seed,) if isinstance(seed, int) else tuple(seed)

    # every random number of a canvas comes from one block of uniforms, laid out as `cut` says
    cut = np.cumsum([1, hi, hi, hi * attempts * 2, pieces, pieces * 2, pieces * attempts * 2])
    images = np.zeros((count, canvas, canvas), dtype=np.uint8)
    boxes, source, clutter = [], [], []
    n_objects, n_pieces = np.zeros(count, dtype=np.int64), np.zeros(count, dtype=np.int64)
    for i in range(count):
        u = np.split(np.random.default_rng((*entropy, i)).random(int(cut[-1])), cut[:-1])
        img, placed = images[i], np.zeros((0, 4), dtype=np.int64)
        n = lo + int(_pick(u[0][0], hi - lo + 1))
        spots = u[3].reshape(hi, attempts, 2)
        for k, (src, side) in enumerate(zip(_pick(u[1][:n], m), small + _pick(u[2][:n], large - small + 1),
                                            strict=True)):  # fmt: skip
            x0, y0, x1, y1 = ink[src]
            patch = _scaled(digits[src, y0:y1, x0:x1], int(side))
            ph, pw = patch.shape
            xy = _pick(spots[k], np.array([canvas - pw + 1, canvas - ph + 1]))  # (attempts, 2)
            cand = np.concatenate([xy, xy + np.array([pw, ph])], axis=1)
            if len(placed):
                cand = cand[(_iou(cand, placed) <= max_iou).all(axis=1)]
                if not len(cand):
                    continue
            bx, by = cand[0, :2]
            region = img[by : by + ph, bx : bx + pw]
            np.maximum(region, patch, out=region)
            placed = np.concatenate([placed, cand[:1]])
            source.append(src)
        boxes.append(placed)
        n_objects[i] = len(placed)
        if not pieces:
            continue
        # clutter: a cut inside the ink of another digit where the ink is long enough, placed
        # at the first candidate spot a pixel clear of every digit box
        other = _pick(u[4], m)
        x0, y0, x1, y1 = ink[other].T
        span = np.stack([np.maximum(x1 - piece_size, x0) - x0, np.maximum(y1 - piece_size, y0) - y0], 1) + 1
        cuts = np.minimum(
            np.stack([x0, y0], 1) + _pick(u[5].reshape(pieces, 2), span), (w - piece_size, h - piece_size)
        )
        xy = _pick(u[6].reshape(pieces, attempts, 2), canvas - piece_size + 1)
        clear = _outside(np.concatenate([xy, xy + piece_size], axis=2), placed + np.array([-1, -1, 1, 1]))
        for p in np.flatnonzero(clear.any(axis=1)):
            px, py = xy[p, clear[p].argmax()]
            cx, cy = cuts[p]
            region = img[py : py + piece_size, px : px + piece_size]
            np.maximum(region, digits[other[p], cy : cy + piece_size, cx : cx + piece_size], out=region)
            clutter.append(other[p])
            n_pieces[i] += 1
    source_arr = np.asarray(source, dtype=np.int64)
    return DetectionCanvases(
        images=images,
        boxes=np.concatenate(boxes).astype(np.int64) if boxes else np.zeros((0, 4), dtype=np.int64),
        labels=np.asarray(labels, dtype=np.int64)[source_arr],
        source=source_arr,
        offsets=np.concatenate([[0], np.cumsum(n_objects)]).astype(np.int64),
        clutter_source=np.asarray(clutter, dtype=np.int64),
        clutter_offsets=np.concatenate([[0], np.cumsum(n_pieces)]).astype(np.int64),
    )


class DetectionTensorDataset(Dataset):
    """Canvases held in memory as uint8; item ``i`` is ``(image, target)`` in torchvision's
    detection form: a float32 ``(C, H, W)`` image in [0, 1] (torchvision's detectors normalise
    it themselves) and ``{"boxes": float32 (n, 4) x0 y0 x1 y1, "labels": int64 (n,)}``.

    Args:
        images: uint8 ``(N, C, H, W)``.
        boxes: ``(T, 4)`` boxes of all canvases, stored flat.
        labels: int64 ``(T,)``.
        offsets: ``(N + 1,)``: the objects of canvas ``i`` are rows ``offsets[i]:offsets[i + 1]``.
        source: optional ``(T,)`` provenance of each object (the sample index of its digit).
        clutter_source: optional provenance of the clutter (the sample indices it was cut from).
    """

    def __init__(
        self, images: Tensor, boxes: Tensor, labels: Tensor, offsets: Tensor, *, source: Tensor | None = None,
        clutter_source: Tensor | None = None,
    ) -> None:  # fmt: skip
        if images.dtype != torch.uint8 or images.ndim != 4 or len(offsets) != len(images) + 1:
            raise ValueError(
                f"images must be uint8 (N, C, H, W) with N + 1 offsets, got {images.dtype} "
                f"{tuple(images.shape)} and {len(offsets)} offsets"
            )
        if boxes.shape != (len(labels), 4) or int(offsets[-1]) != len(labels):
            raise ValueError(
                f"boxes must be (T, 4) with T = {int(offsets[-1])} labels, got {tuple(boxes.shape)}"
            )
        self.images, self.labels, self.offsets = images, labels.long(), offsets.long()
        self.source, self.clutter_source = source, clutter_source
        self.boxes = boxes.float()

    def __len__(self) -> int:
        return len(self.images)

    def target(self, index: int) -> dict[str, Tensor]:
        a, b = int(self.offsets[index]), int(self.offsets[index + 1])
        return {"boxes": self.boxes[a:b].clone(), "labels": self.labels[a:b].clone()}

    # what the evaluation scores against: the targets themselves (no crowds or given areas)
    evaluation_target = target

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self.images[index].float() / 255.0, self.target(index)


def collate(batch: list[tuple[Tensor, dict[str, Tensor]]]) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """``(images, targets)`` as two lists: detection images and their box counts differ."""
    return [image for image, _ in batch], [target for _, target in batch]


def _grey_stats(images: np.ndarray) -> tuple[float, float]:
    """Mean and std of uint8 pixels in [0, 1] units, exactly, from their histogram (a tenth of
    the time of a float64 pass over 8 M pixels)."""
    counts = np.bincount(images.ravel(), minlength=256).astype(np.float64)
    values = np.arange(256) / 255.0
    mean = (counts * values).sum() / counts.sum()
    var = (counts * (values - mean) ** 2).sum() / counts.sum()
    return round(float(mean), 6), round(float(np.sqrt(var)), 6)


def _dataset(made: DetectionCanvases, sample_index: np.ndarray, channels: int) -> DetectionTensorDataset:
    images = torch.from_numpy(made.images[:, None])
    if channels == 3:
        images = images.expand(-1, 3, -1, -1).contiguous()
    return DetectionTensorDataset(
        images, torch.from_numpy(made.boxes), torch.from_numpy(made.labels), torch.from_numpy(made.offsets),
        source=torch.from_numpy(sample_index[made.source]),
        clutter_source=torch.from_numpy(sample_index[made.clutter_source]),
    )  # fmt: skip


def cluttered_mnist_detection(
    cache: Path | None = None, *, canvas: int = 64, train_count: int = 2000, test_count: int = 500,
    seed: int = 0, channels: int = 1,
) -> DataBundle:  # fmt: skip
    """The embedded detection set: ``train_count`` canvases from the 4,000 training digits of
    the MNIST sample, drawn from ``seed``, and ``test_count`` canvases from its 1,000 test
    digits, the same for every seed so that runs are scored on the same images.

    Args:
        cache: folder of the MNIST sample's cache (the user cache folder when ``None``); the
            canvases themselves are made in memory, which takes well under a second.
        channels: 1 (grey) or 3 (the grey plane repeated, for RGB backbones).

    The splits' ``source`` and ``clutter_source`` hold the sample indices of the digits each
    object and each clutter piece came from.
    """
    check_int("seed", seed, minimum=0)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    images, labels = load_mnist_sample(cache)
    tr, te = split_indices(labels)
    made = {
        "train": make_detection_canvases(images[tr], labels[tr], count=train_count, canvas=canvas,
                                         seed=(DETECTION_STREAM, TRAIN_SPLIT, seed)),
        "test": make_detection_canvases(images[te], labels[te], count=test_count, canvas=canvas,
                                        seed=(DETECTION_STREAM, TEST_SPLIT, 0)),
    }  # fmt: skip
    train, test = _dataset(made["train"], tr, channels), _dataset(made["test"], te, channels)
    mean, std = _grey_stats(made["train"].images)
    stats = ((mean,) * channels, (std,) * channels)
    note = f"{canvas}x{canvas}: the data set's fixed size"
    return DataBundle(
        "cluttered-mnist-detection", train, test, DIGITS, stats, channels, (canvas, canvas), size_note=note
    )
