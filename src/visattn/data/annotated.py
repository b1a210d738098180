"""Image files with box annotations: what the COCO and VOC readers share -- the data set they
return, the checks every box goes through, and the bad-fraction rule.

Boxes are ``(x0, y0, x1, y1)`` in pixels with the image's top-left corner at ``(0, 0)``. A box
with ``x1 < x0`` or ``y1 < y0`` or one entirely outside its image makes the image bad; a box
partly outside is clipped to the image and counted; a box of zero width or height holds no
pixel and is left out and counted (torchvision's detectors refuse such boxes). An image whose
file is missing or unreadable, or whose annotation is wrong, is bad: with ``max_bad_fraction``
0 the first one stops the read with one line naming it; otherwise bad images are left out
whole (keeping one without its wrong box would teach that the object is background), logged
once each in a ``BadFiles`` report, and the read refuses when more than that share is bad.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from .._checks import check_float
from .folder import BadFiles, inspect_image
from .mnist_sample import DataUnavailableError

log = logging.getLogger(__name__)


class AnnotationError(DataUnavailableError):
    """An annotation file, or an image it names, cannot be used; the message names the file and
    the problem."""


@dataclass
class AnnotatedImage:
    """One image and its boxes as an annotation file gives them (the image is read later).

    Attributes:
        boxes: float32 ``(n, 4)`` training targets, clipped to the image.
        labels: int64 ``(n,)`` in ``0..K-1``.
        ignored: float32 ``(m, 4)`` regions kept out of the targets (COCO crowds, VOC
            difficult objects) and their ``ignored_labels``, for evaluation.
        areas: the annotation file's object areas of ``boxes`` and then ``ignored`` (COCO's
            segment areas, which decide its small/medium/large split), or ``None``.
    """

    path: Path
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    ignored: np.ndarray
    ignored_labels: np.ndarray
    areas: np.ndarray | None = None
    image_id: int | str = 0


def fit_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[str, tuple | None]:
    """``(status, box)`` of ``(x0, y0, x1, y1)`` in a ``width x height`` image: ``"ok"`` or
    ``"clipped"`` with the box inside the image, ``"empty"`` (zero width or height),
    ``"inverted"`` (``x1 < x0`` or ``y1 < y0``) or ``"outside"`` with ``None``."""
    x0, y0, x1, y1 = box
    if x1 < x0 or y1 < y0:
        return "inverted", None
    if x1 == x0 or y1 == y0:
        return "empty", None
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
    if cx1 <= cx0 or cy1 <= cy0:
        return "outside", None
    clipped = (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1)
    return ("clipped" if clipped else "ok"), (cx0, cy0, cx1, cy1)


class ImageScan:
    """Counts the images of one read, applies the bad-fraction rule, and checks image files.

    Args:
        source: the annotation file or folder, named in the refusal.
        max_bad_fraction: the share of bad images accepted (0: none, stop at the first).
        bad: the report bad images are added to; a new one when ``None``.
        check_images: read each image's header and checksums (``folder.inspect_image``)
            instead of only checking that the file exists.
    """

    def __init__(
        self, source: Path, *, max_bad_fraction: float, bad: BadFiles | None, check_images: bool
    ) -> None:
        self.source, self.check_images = source, check_images
        self.max_bad_fraction = check_float("max_bad_fraction", max_bad_fraction, low=0.0, high=1.0,
                                            high_open=False)  # fmt: skip
        self.bad = BadFiles() if bad is None else bad
        self.total, self.rejected, self.counts = 0, [], Counter()
        self.items: list[AnnotatedImage] = []

    def take(self, path: Path, item: AnnotatedImage | str) -> None:
        """Keep ``item``, or reject the image at ``path`` when ``item`` is the problem found."""
        if isinstance(item, str):
            self.reject(path, item)
        else:
            self.items.append(item)

    def reject(self, path: Path, problem: str) -> None:
        """Leave the image at ``path`` out for ``problem``, or stop when none may be left out."""
        if self.max_bad_fraction == 0:
            raise AnnotationError(f"{path}: {problem} (set max_bad_fraction to skip bad images)")
        # reported (and logged) in ``finish``, once the read is accepted: a refused read says one line
        self.rejected.append((path, problem))

    def image_size(self, path: Path, stated: tuple[int, int] | None) -> tuple[str | None, tuple[int, int]]:
        """``(problem, (H, W))`` of the image at ``path``; ``stated`` is the annotation's size,
        checked against the file's when images are checked."""
        if not path.is_file():
            return "missing image file", (0, 0)
        if self.check_images:
            reason, size = inspect_image(path)
            if reason is not None:
                return reason, (0, 0)
            if stated is not None and tuple(stated) != tuple(size):
                return (
                    f"the annotation gives {stated[1]}x{stated[0]} but the image is {size[1]}x{size[0]}",
                    size,
                )
            return None, size
        if stated is not None:
            return None, stated
        try:
            with Image.open(path) as img:
                return None, (img.size[1], img.size[0])
        except OSError as err:
            return f"unreadable image ({err})", (0, 0)

    def finish(self) -> list[AnnotatedImage]:
        """Refuse the read when more than the allowed share of its images is bad; otherwise
        count the kept images and boxes and return the kept items."""
        n = len(self.rejected)
        if self.total and n / self.total > self.max_bad_fraction:
            raise AnnotationError(
                f"{self.source}: {n} of {self.total} images are unusable, more than the allowed "
                f"{self.max_bad_fraction:.0%} (first: {self.rejected[0][0]}: {self.rejected[0][1]}); "
                "set max_bad_fraction to accept more"
            )
        for path, problem in self.rejected:
            self.bad.add(path, problem)
        self.counts["bad_images"] = n
        self.counts["images"] = len(self.items)
        self.counts["boxes"] = sum(len(item.boxes) for item in self.items)
        return self.items


def as_boxes(rows: list[tuple[float, ...]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32).reshape(-1, 4)


class AnnotatedImages(Dataset):
    """Images decoded on demand; item ``i`` is ``(image, target)`` in torchvision's detection
    form: float32 RGB ``(3, H, W)`` in [0, 1] and ``{"boxes": float32 (n, 4), "labels": int64
    (n,)}``. A file that fails to decode later is logged in ``bad_files`` and replaced by the
    next image that decodes, with that image's target, so a batch never changes size.

    Attributes:
        classes: the class names; label ``k`` is ``classes[k]``.
        category_ids: the annotation file's id of each label (COCO), or ``None``.
        counts: ``images``, ``boxes``, ``ignored`` (crowds or difficult objects), ``clipped``,
            ``empty`` (zero-size boxes left out) and ``bad_images``.
        bad_files: path -> reason of every image left out.
        coco: the pycocotools index of the annotation file (COCO), or ``None``.
    """

    def __init__(
        self, items: list[AnnotatedImage], classes: list[str], *, counts: dict[str, int], bad: BadFiles,
        category_ids: list[int] | None = None, source: Path | None = None, coco: object | None = None,
    ) -> None:  # fmt: skip
        self.items, self.classes, self.category_ids, self.coco = items, list(classes), category_ids, coco
        self.counts, self.bad, self.source = dict(counts), bad, source

    @property
    def bad_files(self) -> dict[str, str]:
        return self.bad.reasons

    def __len__(self) -> int:
        return len(self.items)

    def target(self, index: int) -> dict[str, Tensor]:
        item = self.items[index]
        return {"boxes": torch.from_numpy(item.boxes.copy()), "labels": torch.from_numpy(item.labels.copy())}

    def evaluation_target(self, index: int) -> dict[str, Tensor]:
        """The target with the ignored regions added as ``iscrowd = 1`` (COCO's way of making a
        detection on them neither right nor wrong) and the file's areas when it has them."""
        item = self.items[index]
        out = {
            "boxes": torch.from_numpy(np.concatenate([item.boxes, item.ignored])),
            "labels": torch.from_numpy(np.concatenate([item.labels, item.ignored_labels])),
            "iscrowd": torch.cat([torch.zeros(len(item.boxes)), torch.ones(len(item.ignored))]).long(),
        }
        if item.areas is not None:
            out["area"] = torch.from_numpy(item.areas.astype(np.float32))
        return out

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        for step in range(len(self.items)):
            at = (index + step) % len(self.items)
            path = self.items[at].path
            try:
                with Image.open(path) as img:
                    array = np.asarray(img.convert("RGB"), dtype=np.uint8)
            except (OSError, SyntaxError, ValueError) as err:
                self.bad.add(path, f"failed to decode ({err})")
                continue
            image = torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0
            return image, self.target(at)
        raise DataUnavailableError(f"{self.source}: no image of the split can be decoded")
