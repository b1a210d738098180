"""Cluttered Translated MNIST: a digit at a random position on a larger black canvas, among
fragments cut from other digits -- the classic test bed for visual attention.

Defaults follow the 60x60 set of Mnih et al. 2014 ("Recurrent Models of Visual Attention",
arXiv:1406.6247): 28x28 digits on a 60x60 canvas with four 8x8 clutter pieces. Each image
is a pure function of (seed, index): image i is the same whether 10 or 10,000 are made, and
in any order. Every image comes with the tight bounding box of its digit's pixels, which the
pointing game uses to score where a model looks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._checks import check_int


@dataclass(frozen=True)
class Cluttered:
    """A batch of cluttered images.

    Attributes:
        images: uint8 ``(N, canvas, canvas)``.
        labels: int64 ``(N,)``, the class of the placed digit.
        boxes: int64 ``(N, 4)`` as ``(x0, y0, x1, y1)`` with exclusive ends:
            ``images[i, y0:y1, x0:x1]`` holds every pixel of the digit.
        source: int64 ``(N,)``, the index of the placed digit in the source array.
    """

    images: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    source: np.ndarray


def ink_box(digit: np.ndarray) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of the non-zero pixels of a 2-D array (exclusive ends)."""
    rows = np.flatnonzero(digit.any(axis=1))
    cols = np.flatnonzero(digit.any(axis=0))
    if len(rows) == 0:
        return 0, 0, digit.shape[1], digit.shape[0]
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _cut_start(rng: np.random.Generator, lo: int, hi: int, size: int, full: int) -> int:
    """Start of a ``size``-long cut inside the ink span ``[lo, hi)`` where it is long enough,
    so that fragments carry strokes; anywhere in ``[0, full)`` otherwise."""
    if hi - lo >= size:
        return int(rng.integers(lo, hi - size + 1))
    return int(rng.integers(0, full - size + 1))


def make_cluttered(
    digits: np.ndarray,
    labels: np.ndarray,
    *,
    count: int | None = None,
    canvas: int = 60,
    pieces: int = 4,
    piece_size: int = 8,
    seed: int | tuple[int, ...] = 0,
) -> Cluttered:
    """Make ``count`` cluttered images from ``digits``.

    Image ``i`` places digit ``i % len(digits)`` (so ``count = k * len(digits)`` shows each
    digit k times at different positions) and cuts its clutter from other digits of the same
    array, so a train/test split of the digits carries over to the clutter.

    Args:
        digits: uint8 ``(M, h, w)`` source digits, ``h, w <= canvas``.
        labels: ``(M,)`` their classes.
        count: number of images; ``len(digits)`` when ``None``.
        canvas: side of the square canvas.
        pieces: clutter fragments per image.
        piece_size: side of each square fragment (at most the digit size).
        seed: an int or a tuple of ints; the images are a pure function of ``seed`` and
            their index.
    """
    if digits.ndim != 3 or digits.dtype != np.uint8 or len(digits) != len(labels):
        raise ValueError(
            f"digits must be uint8 (M, h, w) with M labels, got {digits.dtype} {digits.shape} "
            f"and {len(labels)} labels"
        )
    m, h, w = digits.shape
    count = m if count is None else check_int("count", count, minimum=0)
    check_int("canvas", canvas, minimum=max(h, w))
    check_int("pieces", pieces, minimum=0)
    check_int("piece_size", piece_size, minimum=1)
    if piece_size > min(h, w):
        raise ValueError(f"piece_size must be at most the digit size {min(h, w)}, got {piece_size}")
    if pieces and m < 2:
        raise ValueError("clutter needs at least two source digits")
    boxes_src = np.array([ink_box(d) for d in digits], dtype=np.int64)  # (M, 4)

    images = np.zeros((count, canvas, canvas), dtype=np.uint8)
    boxes = np.zeros((count, 4), dtype=np.int64)
    source = np.arange(count, dtype=np.int64) % max(m, 1)
    entropy = (seed,) if isinstance(seed, int) else tuple(seed)
    for i in range(count):
        rng = np.random.default_rng((*entropy, i))
        img = images[i]
        for _ in range(pieces):
            other = (source[i] + rng.integers(1, m)) % m  # any digit but the placed one
            x0, y0, x1, y1 = boxes_src[other]
            cy = _cut_start(rng, y0, y1, piece_size, h)
            cx = _cut_start(rng, x0, x1, piece_size, w)
            piece = digits[other, cy : cy + piece_size, cx : cx + piece_size]
            py, px = rng.integers(0, canvas - piece_size + 1, size=2)
            region = img[py : py + piece_size, px : px + piece_size]
            np.maximum(region, piece, out=region)
        dy, dx = rng.integers(0, canvas - h + 1), rng.integers(0, canvas - w + 1)
        region = img[dy : dy + h, dx : dx + w]
        np.maximum(region, digits[source[i]], out=region)
        bx0, by0, bx1, by1 = boxes_src[source[i]]
        boxes[i] = (dx + bx0, dy + by0, dx + bx1, dy + by1)
    return Cluttered(images, labels[source].astype(np.int64), boxes, source)
